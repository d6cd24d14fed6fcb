"""The retransmission timeout (RTO) of RFC 6298, "Computing TCP's Retransmission Timer".

State: ``SRTT`` (smoothed round-trip time) and ``RTTVAR`` (its variation), both in seconds.

* Before any sample: ``RTO = initial_rto_s`` (RFC 6298 §2.1: 1 s).
* First sample ``R`` (§2.2): ``SRTT = R``, ``RTTVAR = R / 2``.
* Later samples ``R'`` (§2.3), in this order, with ``α = 1/8`` and ``β = 1/4``:
  ``RTTVAR = (1 − β)·RTTVAR + β·|SRTT − R'|``, then ``SRTT = (1 − α)·SRTT + α·R'``.
* After each sample: ``RTO = SRTT + max(G, K·RTTVAR)`` with ``K = 4`` and ``G`` the clock
  granularity, then clamped to ``[min_rto_s, max_rto_s]`` (§2.4, §2.5).
* On a timeout (§5.5) the caller may :meth:`back off <RtoEstimator.backoff>`:
  ``RTO = min(2·RTO, max_rto_s)``; the next sample recomputes RTO from SRTT and RTTVAR,
  which ends the backoff (§5.7). The estimator keeps the un-backed-off value
  (:attr:`~RtoEstimator.base_rto_s`) and the number of doublings
  (:attr:`~RtoEstimator.backoff_level`); ``rto_s = min(base_rto_s · 2^level, max_rto_s)``.

Karn's algorithm (Karn & Partridge 1987, RFC 6298 §3) is the caller's duty: never feed
a sample measured on a packet that was retransmitted (its acknowledgement is ambiguous),
and keep the backed-off RTO until a valid sample arrives (which this class does).

    >>> rto = RtoEstimator(min_rto_s=0.0, clock_granularity_s=0.0)
    >>> rto.rto_s
    1.0
    >>> rto.sample(0.5); rto.rto_s          # SRTT 0.5, RTTVAR 0.25
    1.5
    >>> rto.sample(1.0); rto.rto_s          # RTTVAR 0.3125, SRTT 0.5625
    1.8125
"""

from __future__ import annotations

import math

__all__ = ["RtoEstimator"]

ALPHA = 1 / 8
BETA = 1 / 4
K = 4


class RtoEstimator:
    """RFC 6298 retransmission-timeout estimator (see the module docstring).

    Args:
        initial_rto_s: RTO before the first sample, seconds; RFC 6298 says 1 s.
        min_rto_s: lower clamp, seconds. RFC 6298 §2.4 says RTO SHOULD be rounded up to
            1 s; the default here is 0.2 s, as Linux does, because kvcodec models short
            data-centre and WAN paths where a 1 s floor would dominate every recovery.
        max_rto_s: upper clamp, seconds; RFC 6298 §2.5 allows a maximum of at least 60 s.
        clock_granularity_s: ``G`` in seconds (≥ 0); 1 ms by default.

    Raises:
        ValueError: a parameter is negative, not finite, or ``min_rto_s > max_rto_s``.
    """

    def __init__(
        self,
        initial_rto_s: float = 1.0,
        min_rto_s: float = 0.2,
        max_rto_s: float = 60.0,
        clock_granularity_s: float = 0.001,
    ):
        for name, value in (("initial_rto_s", initial_rto_s), ("min_rto_s", min_rto_s),
                            ("max_rto_s", max_rto_s), ("clock_granularity_s", clock_granularity_s)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if min_rto_s > max_rto_s:
            raise ValueError(f"min_rto_s {min_rto_s!r} is greater than max_rto_s {max_rto_s!r}")
        if initial_rto_s <= 0.0:
            raise ValueError(f"initial_rto_s must be > 0 seconds, got {initial_rto_s!r}")
        self.min_rto_s = float(min_rto_s)
        self.max_rto_s = float(max_rto_s)
        self.clock_granularity_s = float(clock_granularity_s)
        self.srtt_s: float | None = None
        self.rttvar_s: float | None = None
        self.base_rto_s = min(max(float(initial_rto_s), self.min_rto_s), self.max_rto_s)
        self.backoff_level = 0
        self.rto_s = self.base_rto_s
        self.samples = 0

    def sample(self, rtt_s: float) -> None:
        """Take one round-trip-time measurement ``rtt_s`` (seconds, ≥ 0) and update SRTT,
        RTTVAR and RTO (RFC 6298 §2.2–§2.5).

        Raises:
            ValueError: ``rtt_s`` is negative or not finite.
        """
        if not (math.isfinite(rtt_s) and rtt_s >= 0.0):
            raise ValueError(f"an RTT sample must be a finite number of seconds >= 0, got {rtt_s!r}")
        self.update(rtt_s)

    def update(self, rtt_s: float) -> None:
        """:meth:`sample` without the argument check, for hot loops that measure their own
        (finite, non-negative) round trips."""
        srtt = self.srtt_s
        if srtt is None:
            srtt, rttvar = rtt_s, rtt_s / 2
        else:
            rttvar = (1 - BETA) * self.rttvar_s + BETA * (srtt - rtt_s if srtt > rtt_s else rtt_s - srtt)
            srtt = (1 - ALPHA) * srtt + ALPHA * rtt_s
        self.srtt_s, self.rttvar_s = srtt, rttvar
        variation = K * rttvar
        rto = srtt + (variation if variation > self.clock_granularity_s else self.clock_granularity_s)
        self.rto_s = self.base_rto_s = (
            self.min_rto_s if rto < self.min_rto_s else self.max_rto_s if rto > self.max_rto_s else rto
        )
        self.backoff_level = 0
        self.samples += 1

    def backoff(self) -> None:
        """Double RTO after a timeout, up to ``max_rto_s`` (RFC 6298 §5.5); it stays doubled
        until the next sample (§5.7)."""
        self.backoff_level += 1
        self.rto_s = min(self.base_rto_s * 2.0 ** min(self.backoff_level, 1023), self.max_rto_s)
