# Container images (docker/<name>/Dockerfile), built with the repository root as the
# build context. Included from the top-level Makefile.
#
#   make images                               # genalign-cpu, genalign-cuda, genalign-render
#   make images IMAGE_REGISTRY=registry.example.com/ml IMAGE_TAG=0.1.0
#   make push-images
#
# The names are those of components/images.py; compile pipelines with
# $(IMAGE_ENV) in front so that the components name the same registry and tag.

IMAGE_REGISTRY ?= ghcr.io/genalign
IMAGE_TAG      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
GIT_SHA        ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER         ?= docker
DOCKER_BUILD_ARGS ?=

IMAGE_NAMES := cpu cuda render
# $(call image_ref,cpu) -> ghcr.io/genalign/genalign-cpu:<tag>
image_ref = $(IMAGE_REGISTRY)/genalign-$(1):$(IMAGE_TAG)
IMAGE_ENV  = GENALIGN_IMAGE_REGISTRY=$(IMAGE_REGISTRY) GENALIGN_IMAGE_TAG=$(IMAGE_TAG)

define docker_build
	$(DOCKER) build $(DOCKER_BUILD_ARGS) \
		-f docker/$(1)/Dockerfile \
		--build-arg GIT_SHA=$(GIT_SHA) \
		--build-arg VERSION=$(IMAGE_VERSION) \
		$(2) \
		-t $(call image_ref,$(1)) .
endef

.PHONY: images push-images image-cpu image-cuda image-render

images: ## build genalign-cpu, genalign-cuda and genalign-render, tagged $(IMAGE_TAG)
	$(call docker_build,cpu)
	$(call docker_build,cuda)
	$(call docker_build,render,--build-arg BASE_IMAGE=$(call image_ref,cuda))

image-cpu:
	$(call docker_build,cpu)

image-cuda:
	$(call docker_build,cuda)

image-render: ## needs genalign-cuda:$(IMAGE_TAG) built first
	$(call docker_build,render,--build-arg BASE_IMAGE=$(call image_ref,cuda))

push-images: ## push the images that `make images` built
	$(foreach name,$(IMAGE_NAMES),$(DOCKER) push $(call image_ref,$(name)) &&) true
