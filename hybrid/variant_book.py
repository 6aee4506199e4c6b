"""The campaign's book of code variants: what a code-changing proposer is handed (``VariantChecker``).

It checks each proposed variant against the user's tree (``hybrid.variants.build``), then, with
``target.smoke_command`` set, runs that command once, here, on the variant (a fresh snapshot of the
target with the variant applied, under ``<campaign>/variants/.smoke/``, killed with its process
group past ``target.smoke_timeout_s``). Every outcome is recorded in the store once, ok or rejected
with its reason, before any experiment can use the variant; an ok variant's diff is written to
``<campaign>/variants/<id>.diff``. On resume the book is read back from the store: no variant is
re-checked against a tree the user may have changed since.

The base new changes build on (autoresearch's keep/discard) is the code of the best experiment so
far: a variant becomes the base once its result beats every result of the code it changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from backends.workdir import snapshot
from hybrid import history, noise, targets
from hybrid.secrets import experiment_environ, scrub
from hybrid.space import SearchSpace
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import Experiment, Variant
from hybrid.variants import Built, Editable, Limits, VariantInfo, VariantRejected, build, write_into

SMOKE_TIMEOUT_S = 120.0


class VariantBook:
    """Checks, records and applies the campaign's code variants (thread-safe)."""

    def __init__(self, store: Store, target: TargetSpec, space: SearchSpace, campaign_dir: Path,
                 experiments: Callable[[], Sequence[Experiment]], *, target_hardware: str | None = None,
                 never_copied: Sequence[Path] = (), limits: Limits | None = None) -> None:
        self.store, self.target, self.space, self.dir = store, target, space, Path(campaign_dir)
        self._editable = Editable(target.workdir, target.editable)
        self._experiments, self.target_hardware = experiments, target_hardware
        self._never_copied, self.limits = tuple(never_copied), limits or Limits()
        self._lock = threading.RLock()
        self._built: dict[str, Built] = {}
        self._rejected: dict[str, str] = {}  # id -> reason
        self._variants: dict[str, Variant] = {}
        self._order: list[str] = []  # ids in the order proposed
        for rec in store.variants():
            self._order.append(rec.variant.id)
            self._variants[rec.variant.id] = rec.variant
            if rec.ok:
                self._built[rec.variant.id] = Built.from_json(rec.variant, rec.built, rec.diff)
                self._write_diff(self._built[rec.variant.id])
            else:
                self._rejected[rec.variant.id] = rec.reason

    # ---- VariantChecker ---------------------------------------------------------------------
    @property
    def editable(self) -> Editable:
        return self._editable

    def files(self) -> dict[str, str]:
        out = {}
        for f in self._editable.files:
            try:
                out[f] = self._editable.read(f, self.limits)
            except VariantRejected:
                continue  # unreadable or too big: not offered for editing
        return out

    def check(self, variant: Variant, source: str) -> Built:
        with self._lock:
            if variant.id in self._built:
                return self._built[variant.id]
            if variant.id in self._rejected:
                raise VariantRejected(self._rejected[variant.id])
            try:
                parent = None
                if variant.parent is not None:
                    parent = self._built.get(variant.parent)
                    if parent is None:
                        raise VariantRejected(f"its parent {variant.parent} is not a variant that may run; build on "
                                              "an ok variant, or on the unchanged code (no parent)")
                built = build(variant, self._editable, parent, self.limits)
                self._smoke(built)
            except VariantRejected as e:
                reason = scrub(str(e), self.target.secret_values)
                self.store.add_variant(variant, "rejected", source=source, reason=reason)
                self._rejected[variant.id] = reason
                self._variants[variant.id] = variant
                self._order.append(variant.id)
                raise VariantRejected(reason) from None
            self.store.add_variant(variant, "ok", source=source, diff=built.diff, built=built.to_json())
            self._built[variant.id] = built
            self._variants[variant.id] = variant
            self._order.append(variant.id)
            self._write_diff(built)
            return built

    def known(self) -> list[VariantInfo]:
        with self._lock:
            return [VariantInfo(self._built[v].variant, "ok", "", self._built[v].diff) if v in self._built
                    else VariantInfo(self._variants[v], "rejected", self._rejected[v], "") for v in self._order]

    def base(self) -> str | None:
        """Autoresearch's keep/discard: the code of the best result, if that variant held against the
        code it changed (``noise.held``: beyond the run-to-run noise once replicates measured it there);
        else, walking up, the nearest ancestor that held; None: the unchanged code."""
        exps = list(self._experiments())
        objective = self.target.objective
        best = history.best(exps, objective, self.target_hardware)
        if best is None:
            return None
        hardware = best.hardware
        measured = noise.noise_by_hardware(exps, objective).get(hardware)  # on the hardware compared
        sd = measured.sd if measured is not None else None
        by_code: dict[str | None, float] = {}
        for e, v in history.successes(exps, objective):
            if e.hardware == hardware and (e.variant not in by_code or objective.better(v, by_code[e.variant])):
                by_code[e.variant] = v
        code = best.variant
        with self._lock:
            while code is not None and code in self._built:
                parent = self._built[code].variant.parent
                if noise.held(by_code.get(code), by_code.get(parent), sd, objective) == "yes":
                    return code
                code = parent
        return None

    # ---- the campaign's side ----------------------------------------------------------------
    def parents(self) -> dict[str, str | None]:
        """Every variant that may run -> the one it is stacked on (None: the unchanged code)."""
        with self._lock:
            return {vid: b.variant.parent for vid, b in self._built.items()}

    def explore(self, k: int = 4) -> list[str | None]:
        """The code parameter proposers explore on (``CandidatePool`` spreads their candidates over it
        in turn): the base first, then up to ``k - 1`` other codes that may run, the best results
        first, then those not run yet; the unchanged code is one of them (None)."""
        exps = list(self._experiments())
        best: dict[str | None, float] = {}
        for e, v in history.successes(exps, self.target.objective):
            loss = self.target.objective.sign() * v
            best[e.variant] = min(loss, best.get(e.variant, loss))
        with self._lock:
            codes: list[str | None] = [None, *self._built]
        base = self.base()
        others = [c for c in codes if c != base]
        others.sort(key=lambda c: (c not in best, best.get(c, 0.0)))
        return [base, *others][:max(1, k)]

    def get(self, variant_id: str) -> Built | None:
        with self._lock:
            return self._built.get(variant_id)

    def apply(self, workdir: Path, variant_id: str) -> list[str]:
        """Put the variant into an experiment's snapshot; notes where the user's file changed since."""
        built = self.get(variant_id)
        if built is None:
            raise VariantRejected(f"variant {variant_id} is not an ok variant of this campaign")
        return write_into(workdir, built, self.target.workdir)

    def diff_path(self, variant_id: str) -> Path:
        return self.dir / "variants" / f"{variant_id}.diff"

    def _write_diff(self, built: Built) -> None:
        path = self.diff_path(built.variant.id)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".diff.tmp")
        tmp.write_text(built.diff, encoding="utf-8")
        os.replace(tmp, path)  # whole or not at all

    def _smoke(self, built: Built) -> None:
        """Run ``target.smoke_command`` on the variant, here, before any worker is spent on it."""
        command = self.target.smoke_command
        if not command:
            return
        root = self.dir / "variants" / ".smoke" / built.variant.id
        shutil.rmtree(root, ignore_errors=True)
        try:
            snapshot(self.target.workdir, root, self.target.exclude, skip=(self.dir, *self._never_copied))
            write_into(root, built, self.target.workdir)
            params = self.space.defaults()
            exp_id = f"smoke-{built.variant.id}"
            cmd = targets.build_command(command, params, exp_id, "local")
            env = {**experiment_environ(), **targets.build_env(self.target.env, exp_id, "local", params)}
            timeout = self.target.smoke_timeout_s or SMOKE_TIMEOUT_S
            with subprocess.Popen(cmd, shell=True, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True) as proc:
                try:
                    out, _ = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    proc.communicate()
                    raise VariantRejected(f"target.smoke_command did not finish in {timeout:g}s on this variant "
                                          "(it hangs, or is too slow for a smoke test)") from None
            _kill_group(proc)  # what it left behind
            if proc.returncode != 0:
                tail = " | ".join(ln.strip() for ln in out.strip().splitlines()[-3:] if ln.strip())
                raise VariantRejected(f"target.smoke_command failed on this variant (exit code {proc.returncode}): "
                                      f"{tail[-400:] or 'no output'}")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
