"""The report of a run: measured time, traffic and rounds next to the analytic network estimate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netsim import Profile


def format_report(stats: Mapping[int, Mapping[str, Any]], profile: Profile, wall: float) -> str:
    """Measured time, traffic and rounds, next to the analytic network estimate."""
    s0, s1 = stats.get(0, {}), stats.get(1, {})
    rounds = max(s0.get("rounds", 0), s1.get("rounds", 0))
    online = s0.get("online_bytes_sent", 0) + s1.get("online_bytes_sent", 0)
    dealer = s1.get("dealer_bytes_recv", 0) + s0.get("dealer_bytes_recv", 0)
    compute = max(s0.get("compute_time", 0.0), s1.get("compute_time", 0.0))
    per_dir = max(s0.get("online_bytes_sent", 0), s1.get("online_bytes_sent", 0))
    net = profile.estimate(rounds, per_dir)
    # each on-demand dealer batch is a request/response round trip; prefetched ones overlap
    dealer_net = profile.estimate(2 * s1.get("dealer_frames_recv", 0), s1.get("dealer_bytes_recv", 0))
    lines = [
        f"network profile : {profile.describe()}",
        f"wall time       : {wall:.3f} s",
        f"online traffic  : {online / 1e6:.3f} MB in {rounds} rounds "
        f"(P0->P1 {s0.get('online_bytes_sent', 0)} B, P1->P0 {s1.get('online_bytes_sent', 0)} B, "
        f"{max(s0.get('frames', 0), s1.get('frames', 0))} frames)",
        f"dealer traffic  : {dealer / 1e6:.3f} MB ({s1.get('dealer_requests', 0)} requests, "
        f"P1 waited for {s1.get('dealer_waits', 0)}: {s1.get('dealer_wait_time', 0.0):.3f} s)",
        f"analytic        : {compute + net + dealer_net:.3f} s = compute {compute:.3f} s + rounds x latency "
        f"+ bytes / bandwidth {net:.3f} s + dealer link {dealer_net:.3f} s",
    ]
    return "\n".join(lines)
