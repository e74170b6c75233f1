"""Exact prefix matching from the engines' KV-cache events (docs/kv-events.md).

One ``BlockIndex`` per runtime, fed by one subscriber per endpoint that publishes events.
Before a request for a model with a configured ``tokenizer`` is balanced, its prompt is
tokenized the way the engine does it and cut into block keys; the prefix scorer then uses
how many leading blocks each endpoint really holds. Endpoints whose subscriber is not in
sync are left out, and without a tokenizer or events the estimated index is used.
"""

from __future__ import annotations

from mixroute.balancer.kv_events import (
    BlockIndex,
    ChatTemplateRule,
    HFTokenizer,
    KVEventSubscriber,
    SimTokenizer,
    Tokenizer,
    chain_keys,
    tokenize_request,
)
from mixroute.config.schema import MixrouteConfig, TokenizerConfig
from mixroute.context import RequestContext


def build_tokenizer(settings: TokenizerConfig) -> Tokenizer:
    if settings.kind == "sim":
        return SimTokenizer()
    assert settings.path is not None
    template = (
        ChatTemplateRule.llama3() if settings.template == "llama3" else ChatTemplateRule.chatml()
    )
    return HFTokenizer(settings.path, template)


class KVEventTracking:
    def __init__(self, config: MixrouteConfig) -> None:
        self.index = BlockIndex()
        self._subscribers = {
            e.name: KVEventSubscriber(
                e.name, e.kv_events.pub, e.kv_events.replay, self.index, topic=e.kv_events.topic
            )
            for e in config.endpoints
            if e.kv_events is not None
        }
        self._block_size = {
            e.model: e.kv_events.block_size for e in config.endpoints if e.kv_events is not None
        }
        self._tokenizers = {
            model: build_tokenizer(settings.tokenizer)
            for model, settings in config.models.items()
            if settings.tokenizer is not None and model in self._block_size
        }

    def start(self) -> None:
        for subscriber in self._subscribers.values():
            subscriber.start()

    async def stop(self) -> None:
        for subscriber in self._subscribers.values():
            await subscriber.stop()

    async def annotate(self, ctx: RequestContext) -> None:
        """Set ``ctx.kv_matches`` when the model's engines publish events we follow."""
        tokenizer = self._tokenizers.get(ctx.model)
        if tokenizer is None:
            return
        token_ids = await tokenize_request(tokenizer, ctx.body)
        if not token_ids:
            return
        keys = chain_keys(token_ids, self._block_size[ctx.model])
        held = self.index.match_keys(keys)
        synced = {
            name: count
            for name, count in held.items()
            if name in self._subscribers and self._subscribers[name].synced.is_set()
        }
        ctx.kv_matches = (synced, len(keys))
