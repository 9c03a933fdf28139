"""`make gpu-wheels`: the wheels `make gpu-check` needs on an offline GPU machine, in .gpu/ (git-ignored).

The machine this workplace lends has python 3.12 with torch, numpy, pyarrow, pandas, sympy and the usual scientific
stack, and no network. This writes, for CPython 3.12 on x86-64 Linux, at the versions installed here (the ones the
tests pass with): this package, its dependencies (trl, the pinned transformers, accelerate, peft, datasets,
math-verify) and theirs, minus what that image already has (PROVIDED_BY_IMAGE), plus a DeepSpeed wheel built here
without compiled ops (DS_BUILD_OPS=0: ops are JIT-built there when used), and SmolLM2's tokenizer files in
.gpu/tokenizer for the random stand-in model. It fails if the set is over --budget_mib (the device tool carries
64 MiB per call, the working tree included).

    make gpu-wheels                      # python -m scripts.gpu_wheels
    python -m scripts.gpu_wheels --dest .gpu --budget_mib 56
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging import tags
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "linux_x86_64"]  # fmt: skip
PLATFORM_FLAGS = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
PLATFORM_FLAGS += [f"--platform={tag}" for tag in PLATFORMS]
# On the GPU image already (KINDS.md's package list): large or compiled, and version-compatible with these pins.
PROVIDED_BY_IMAGE = {
    "torch", "triton", "numpy", "pyarrow", "pandas", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
    "filelock", "fsspec", "packaging", "psutil", "pyyaml", "regex", "requests", "urllib3", "certifi", "idna",
    "charset-normalizer", "typing-extensions", "tqdm", "aiohttp", "aiosignal", "frozenlist", "multidict", "yarl",
    "propcache", "aiohappyeyeballs", "attrs", "httpx", "httpcore", "h11", "anyio", "click", "rich", "pygments",
    "markdown-it-py", "mdurl", "shellingham", "typer", "xxhash", "ninja", "msgpack", "py-cpuinfo", "einops",
    "python-dateutil", "six", "tzdata", "pytz", "annotated-doc", "setuptools", "nvidia-ml-py",
}  # fmt: skip
BUILT_HERE = {"deepspeed", "trl-sapo"}  # not downloaded: built by this script
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def closure(roots: list[str], environment: dict = TARGET_ENV) -> dict[str, str]:
    """{name: installed version} of `roots` and everything they require (no extras) on the target, from the
    metadata of this environment, minus PROVIDED_BY_IMAGE and the nvidia-* CUDA libraries."""
    found: dict[str, str] = {}
    pending = [Requirement(r) for r in roots]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found or name in PROVIDED_BY_IMAGE or name.startswith("nvidia-"):
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError as err:
            raise SystemExit(f"{name} is required but not installed here: run `make setup` first") from err
        found[name] = dist.version
        for text in dist.requires or []:
            child = Requirement(text)
            if child.marker is None or child.marker.evaluate({**environment, "extra": ""}):
                pending.append(child)
    return dict(sorted(found.items()))


def project_roots() -> list[str]:
    """This package's runtime dependencies (pyproject.toml) and deepspeed."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["deepspeed"]]


def pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def build(dest: Path, budget_mib: float) -> dict:
    wheels = dest / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    versions = closure(project_roots())
    for name, version in versions.items():
        if name not in BUILT_HERE:
            pip("download", "-q", "--no-deps", *PLATFORM_FLAGS, "-d", str(wheels), f"{name}=={version}")
    with tempfile.TemporaryDirectory() as tmp:  # DeepSpeed ships an sdist only: build it against this torch, no ops
        env = {**os.environ, "DS_BUILD_OPS": "0"}
        pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, f"deepspeed=={versions['deepspeed']}",
            env=env)  # fmt: skip
        for built in Path(tmp).glob("*.whl"):
            shutil.move(built, wheels / built.name)
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO_ROOT))
    copy_tokenizer(dest / "tokenizer")
    sizes = {p.name: p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}
    total_mib = sum(sizes.values()) / 2**20
    manifest = {"versions": versions, "total_mib": round(total_mib, 1), "budget_mib": budget_mib, "files": sizes}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    check_wheels(wheels, versions)
    if total_mib > budget_mib:
        raise SystemExit(f"{dest} holds {total_mib:.1f} MiB, over the {budget_mib} MiB budget")
    return manifest


def check_wheels(wheels: Path, versions: dict[str, str]) -> None:
    """One wheel per package, each at the version wanted and installable on CPython 3.12 x86-64 Linux."""
    found: dict[str, str] = {}
    supported = set(tags.cpython_tags((3, 12), platforms=PLATFORMS))
    supported |= set(tags.compatible_tags((3, 12), interpreter="cp312", platforms=PLATFORMS))
    for path in wheels.glob("*.whl"):
        name, version, _, wheel_tags = parse_wheel_filename(path.name)
        if name in found:
            raise SystemExit(f"two wheels of {name} in {wheels}: pip would refuse the set")
        found[name] = str(version)
        if not wheel_tags & supported:
            raise SystemExit(f"{path.name} does not install on CPython 3.12 x86-64 Linux")
    wanted = {**versions, "trl-sapo": distribution("trl-sapo").version}
    missing = {n: v for n, v in wanted.items() if found.get(n) != v}
    if missing:
        raise SystemExit(f"wheels missing or at other versions: {missing}")


def copy_tokenizer(dest: Path) -> None:
    from tools.models import prepare_smollm2

    source = prepare_smollm2()
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.gpu_wheels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dest", type=Path, default=REPO_ROOT / ".gpu", help="output folder (default %(default)s)")
    p.add_argument("--budget_mib", type=float, default=56.0, help="fail above this size (default %(default)s)")
    args = p.parse_args(argv)
    if args.budget_mib <= 0:
        p.error("--budget_mib must be > 0")
    manifest = build(args.dest, args.budget_mib)
    print(f"{len(manifest['versions'])} packages, {manifest['total_mib']} MiB in {args.dest} "
          f"(budget {manifest['budget_mib']} MiB); see {args.dest / 'manifest.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
