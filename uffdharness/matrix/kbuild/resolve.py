"""A source spec (``src:``, ``debian-src:``) -> a bootable KernelImage, built if needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..kernels import KernelFetchError, KernelImage
from ..kernelspec import SpecKind
from . import debsource, identity
from .build import BuildError, BuildRequest, SourceTree, build
from .specs import SourceSpec

Log = Callable[[str], None]


class KernelBuildError(KernelFetchError):
    """The kernel of a source spec could not be built; the message says why."""


def local_source(tree: Path) -> SourceTree:
    try:
        found = identity.tree_identity(tree)
    except identity.IdentityError as exc:
        raise KernelBuildError(str(exc)) from exc
    return SourceTree(path=tree, identity=found, location=str(tree), label=str(tree))


def describe(spec: SourceSpec, source: SourceTree, meta: dict) -> dict:
    """What the report says about a kernel built here (JSON-ready)."""
    return {
        "self_built": True,
        "source": source.label,
        "identity": source.identity.text,
        "patches": [str(p.path) for p in spec.patches],
        "patch_sha256": [p.digest for p in spec.patches],  # KCIDB's patchset hash needs them
        "config": [str(f.path) for f in spec.fragments],
        "carries_fixes": list(spec.carries_fixes),
        "files_compiled": meta.get("files_compiled"),
        "build_s": meta.get("total_s"),
        "entry": meta.get("entry"),
        "build_dir": meta.get("build_dir"),
    }


def unknown_fixes(fixes: tuple[str, ...]) -> list[str]:
    """Declared fixes no scenario's known bug names: they change no judgment (a typo?)."""
    from ...scenarios import CATALOGUE

    known = {item.known_bug.fix for item in CATALOGUE.values() if item.known_bug}
    return [fix for fix in fixes if fix not in known]


def built_kernel(spec: SourceSpec, cache: Path, max_list_age_s: float, log: Log) -> KernelImage:
    for fix in unknown_fixes(spec.carries_fixes):
        log(
            f"{spec.text}: carries '{fix}', which no scenario's known bug names "
            "(uffdharness run --list); it changes no verdict"
        )
    if spec.kind is SpecKind.DEBIAN_SOURCE:
        try:
            source = debsource.fetch(spec, cache, max_list_age_s, log)
        except debsource.SourceFetchError as exc:
            raise KernelBuildError(str(exc)) from exc
    else:
        assert spec.tree is not None
        source = local_source(spec.tree)
    request = BuildRequest(source, spec.patches, spec.extra_config)
    try:
        built = build(request, cache, log, what="build")  # the matrix prefixes the spec
    except BuildError as exc:
        raise KernelBuildError(f"{spec.text}: {exc}") from exc
    meta = dict(built.meta, entry=str(built.entry))
    return KernelImage(
        spec.text,
        built.release,
        built.bzimage,
        built.vmlinux,
        None,  # everything the guest needs is built in
        source.package_version,
        built.entry,
        carried_fixes=spec.carries_fixes,
        build=describe(spec, source, meta),
    )
