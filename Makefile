# The verbs a person remembers. Each sets up .venv from a fresh clone when needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install demo demo-planner demo-hand-pose demo-voxel-sds test test-unit pipelines bench k8s clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone: the pinned CPU build; the constraints keep it there
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: install ## the part-dpo pipeline, tiny preset, through kfp.local with a local MLflow
	$(VENV)/bin/genalign run part-dpo --preset tiny

demo-planner: install ## the planner-dpo pipeline (iterative DPO of a VLM planner), tiny preset
	$(VENV)/bin/genalign run planner-dpo --preset tiny

demo-hand-pose: install ## the hand-pose pipeline (staged training of a hand-pose transformer), tiny preset
	$(VENV)/bin/genalign run hand-pose --preset tiny

demo-voxel-sds: install ## the voxel-sds pipeline (score distillation of a voxel world), tiny preset
	$(VENV)/bin/genalign run voxel-sds --preset tiny

test: install services ## every tier: unit, contracts, integration, e2e (PostgreSQL, moto S3 and MLflow on loopback), gpu (skipped without CUDA)
	$(PY) -m pytest -q

test-unit: install ## the fast tier: tests/unit and the light contracts (no subprocess, no services)
	$(PY) -m pytest -q -m "not integration and not e2e and not gpu"

pipelines: install ## compile every pipeline into pipelines/compiled/
	@mkdir -p pipelines/compiled
	# the default image names, as the drift test compiles them (tests/unit/test_compiled_pipelines.py)
	env -u GENALIGN_IMAGE_REGISTRY -u GENALIGN_IMAGE_TAG -u GENALIGN_IMAGE_CPU -u GENALIGN_IMAGE_CUDA -u GENALIGN_IMAGE_RENDER \
		sh -c 'for p in $$($(VENV)/bin/genalign pipelines); do $(VENV)/bin/genalign compile $$p --preset tiny -o pipelines/compiled/$$p.yaml || exit 1; done && \
		$(VENV)/bin/genalign compile part-dpo --preset tiny --profile k8s/cluster-profile.multinode.example.yaml -o pipelines/compiled/part-dpo.multinode.yaml'

k8s: ## render both kustomize overlays
	kubectl kustomize k8s/overlays/dev > /dev/null && kubectl kustomize k8s/overlays/gpu > /dev/null && echo k8s overlays render

bench: install ## every benchmark; each prints its table and writes benchmarks/results/<name>.json
	$(PY) benchmarks/flow_dpo_step.py
	$(PY) benchmarks/flow_dpo_step.py --adapter dora
	$(PY) benchmarks/penetration_broadphase.py
	$(PY) benchmarks/rollout_scaling.py
	$(PY) benchmarks/hand_pose_throughput.py
	$(PY) benchmarks/voxel_map_io.py
	$(PY) benchmarks/voxel_render.py
	$(PY) benchmarks/image_dspo_step.py

clean:
	rm -rf .genalign

include docker/images.mk
include tests/services.mk
