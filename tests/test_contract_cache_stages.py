"""The contract suite on cache stages (token selectors), which have no decode: the round
trip is compared with the cache the selector produced, positions travel in the payload,
and ``cache_stage`` checks that the selection is a subset of the input.

No cache stage is built in yet, so this module brings its own: :class:`SinkWindow`, the
"attention sinks + recent window" selection of StreamingLLM (Xiao et al., 2023,
"Efficient Streaming Language Models with Attention Sinks", arXiv:2309.17453), and a
broken copy that forgets to carry the positions of the tokens it keeps.
"""

from __future__ import annotations

import attrs
import torch

from kvcodec import CacheStage, KVCache
from kvcodec.cache import LayerKV
from kvcodec.testing import CodecContract, run_contract


@attrs.frozen
class SinkWindow(CacheStage):
    """Keep each layer's first ``sinks`` and last ``recent`` tokens (all of them when the
    layer has no more), with their positions."""

    name = "test_sink_window"
    family = "selector"

    recent: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    sinks: int = attrs.field(default=1, validator=attrs.validators.ge(0))

    def _keep(self, layer: LayerKV) -> torch.Tensor:
        t = layer.seq_len
        if t <= self.sinks + self.recent:
            return torch.arange(t, device=layer.keys.device)
        return torch.cat([torch.arange(self.sinks), torch.arange(t - self.recent, t)]).to(layer.keys.device)

    def _positions(self, layer: LayerKV, idx: torch.Tensor) -> torch.Tensor:
        return layer.positions.index_select(-1, idx)

    def apply(self, cache: KVCache, context) -> KVCache:
        def select(_i: int, layer: LayerKV) -> LayerKV:
            idx = self._keep(layer)
            return layer.replace(
                keys=layer.keys.index_select(2, idx),
                values=layer.values.index_select(2, idx),
                positions=self._positions(layer, idx),
            )

        return cache.map(select)


@attrs.frozen
class RenumberingSinkWindow(SinkWindow):
    """FAULT: keeps the right tokens but numbers them 0, 1, 2, … — as if they had been
    the first ones — so the model would see them at the wrong positions."""

    name = "broken_renumbering_window"

    def _positions(self, layer: LayerKV, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(idx), device=idx.device)
        return rows if layer.positions.dim() == 1 else rows.expand(layer.kv_heads, -1).contiguous()


class TestSinkWindow(CodecContract):
    spec = "test_sink_window:recent=3 k=int8 v=identity"
    codec = "test_sink_window"
    extra_codecs = (SinkWindow,)
    invalid_params = ("recent=0", "sinks=-1")
    max_examples = 10


def test_the_selection_is_what_streamingllm_keeps():
    from kvcodec.testing import make_cache

    cache = make_cache(seed=2, layers=1, heads=2, seq=10, head_dim=8)
    out = SinkWindow(recent=3, sinks=1).apply(cache, {})
    assert out[0].positions.tolist() == [0, 7, 8, 9]
    assert torch.equal(out[0].keys, cache[0].keys[:, :, [0, 7, 8, 9]])


def test_a_selector_that_renumbers_its_tokens_is_caught():
    report = run_contract(
        "broken_renumbering_window identity",
        "broken_renumbering_window",
        extra_codecs=[RenumberingSinkWindow],
        checks=["declaration", "round_trip", "cache_stage"],
    )
    assert report.failed == ["cache_stage"], report
    assert "differ from the originals at their positions" in report.outcomes["cache_stage"].message
