"""A short run of the uffd-stress design (uffdharness.stress) on every memory kind, so the
matrix runs it on every kernel: lockers faulting pages in while handlers and background
UFFDIO_COPY race to fill them and the neighbouring VMAs churn; every per-page counter
must survive every bounce (``uffdharness stress`` runs it long)."""

from __future__ import annotations

from .. import stress
from ..abi import RegisterMode
from .checks import Checks
from .context import Context
from .model import ALL_KINDS, THP_KINDS, Observation
from .registry import scenario

STRESS_SECONDS = 0.2  # of bouncing, at most; and at most STRESS_SHARE of the timeout
STRESS_SHARE = 0.1
MIB = 2  # per area
THREADS = 2  # lockers, copiers and handlers each
MIN_BOUNCES = 5  # bounce 4 is the first whose handlers poll(): both wait modes


@scenario(
    id="stress",
    title="uffd-stress: faults, background UFFDIO_COPY and VMA churn on two bouncing areas",
    checks=f"for {STRESS_SECONDS:g} s (at least {MIN_BOUNCES} bounces; at most a tenth of the "
    "timeout), C lockers increment per-page counters in the registered area while native "
    "handlers (a blocking read() in bounces 0-3, poll() from 4) and background threads UFFDIO_COPY "
    "every page from the other area (EEXIST then WAKE) and the neighbouring VMAs are split, "
    "moved and unmapped; with uffd-wp where the kind has it (COPY_MODE_WP, WP faults "
    "resolved); after each bounce every counter holds what the lockers counted, no errno "
    "but EEXIST/EAGAIN, no thread stuck",
    memory=ALL_KINDS + THP_KINDS,
    modes=RegisterMode.MISSING,
    probes=RegisterMode.MISSING | RegisterMode.WP,
    hugepages=2 * stress.area_pages_for(MIB, THREADS, 2 << 20),
)
def stress_scenario(ctx: Context) -> Observation:
    seconds = min(STRESS_SECONDS, STRESS_SHARE * ctx.timeout)
    # uffd-stress adds the WP round trips wherever the kind and kernel have uffd-wp.
    wp = ctx.probe_features(RegisterMode.MISSING | RegisterMode.WP) is not None
    config = stress.StressConfig(
        memory=ctx.memory.value,
        mib=MIB,
        bounces=None,
        seconds=seconds,
        min_bounces=MIN_BOUNCES,
        engine="native",
        wp=wp,
        threads=THREADS,
        deadline=max(1.0, 0.5 * ctx.timeout),
    )
    result = stress.run(config)
    check = Checks(
        {
            "seconds": round(result.seconds, 3),
            "pages": result.pages,
            "wp": wp,
            "page_size": result.page_size,
            "drop": result.drop,
            "bounces": [
                {
                    "modes": f"{b.lockers} {b.start} {b.wait}",
                    "faults": b.faults,
                    "wp_faults": b.wp_faults,
                    "copies": b.copies,
                    "copy_eexist": b.copy_eexist,
                    "increments": b.increments,
                    "churn_ops": b.churn_ops,
                }
                for b in result.bounces
            ],
            "pages_per_s": round(result.pages_per_s),
        }
    )
    check.expect_that(
        "problems", result.problems, not result.problems, "every counter intact, no errno"
    )
    check.expect_that(
        "bounces_done",
        len(result.bounces),
        result.problems or len(result.bounces) >= MIN_BOUNCES,
        f"at least {MIN_BOUNCES}",
    )
    faults = sum(b.faults for b in result.bounces)
    key = (
        f"bounces={len(result.bounces)} faults={faults} "
        f"counters={'ok' if not result.problems else 'BAD'}"
    )
    return check.observation(key=key)
