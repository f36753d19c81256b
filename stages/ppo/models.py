"""The models of a PPO run: policy and value model as one trained module, the frozen reference, the optimizer."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import PipelineError

from ..ppo_config import PPOStageConfig
from .rollout import Rollout
from .trunk import Stack, TrunkPlan, lm_logits


def classifier_parts(model) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) of a sequence-classification model, looking through a peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, inner.base_model_prefix, None)
    head = getattr(inner, "score", None) or getattr(inner, "classifier", None)
    if backbone is None or head is None:
        raise PipelineError(f"the reward model ({type(inner).__name__}) has no backbone/score head to build a value "
                            "model from")
    return backbone, head


class PolicyAndValue(nn.Module):
    """The trained modules in one nn.Module, so accelerate wraps one model (DDP, DeepSpeed) with one optimizer.

    forward returns the policy's logits at the positions that predict the response tokens, and the value model's
    value of each of those positions (the state before each response token)."""

    def __init__(self, policy: nn.Module, value: nn.Module, trunk: TrunkPlan | None = None):
        super().__init__()
        self.policy, self.value = policy, value
        self.trunk = trunk if trunk is not None else TrunkPlan(0, 0, 0, "off")

    # What trl's unwrap_model_for_generation expects of a model: checkpointing is turned off while sampling.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_gradient_checkpointing", False))

    def gradient_checkpointing_disable(self) -> None:
        for model in (self.policy, self.value):
            model.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for model in (self.policy, self.value):
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False})

    def forward(self, input_ids, attention_mask, position_ids, response_width: int, cached: dict | None = None):
        """(policy logits, values) of the response positions. With ``cached`` (the hidden states ``score`` kept for
        these rows and columns) only the layers from each model's lowest trainable one are run."""
        if cached is not None:
            return self._from_cache(input_ids, attention_mask, position_ids, response_width, cached)
        # Only the last response_width + 1 positions go through the LM head: with a 49k vocabulary the head costs
        # more than the transformer on short sequences.
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             logits_to_keep=response_width + 1, use_cache=False).logits[:, :-1]
        backbone, _ = classifier_parts(self.value)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return logits, self._values(hidden, input_ids.shape[1], response_width)

    def _values(self, hidden, width: int, response_width: int) -> torch.Tensor:
        _, head = classifier_parts(self.value)
        # an ensemble reward model's value head has one output per member: the value is their mean
        return head(hidden[:, width - response_width - 1 : width - 1]).float().mean(-1)

    def _from_cache(self, input_ids, attention_mask, position_ids, response_width: int, cached: dict):
        trunk = self.trunk
        policy, value = Stack(self.policy), Stack(self.value)
        layers = len(policy.backbone.layers)
        mask, rotary = policy.context(cached["policy"], attention_mask, position_ids)
        top = policy.layers(cached["policy"], trunk.policy, layers, mask, rotary, position_ids)
        logits = lm_logits(self.policy, policy.finish(top), response_width + 1)
        mask, rotary = value.context(cached["value"], attention_mask, position_ids)
        top = value.layers(cached["value"], trunk.value, layers, mask, rotary, position_ids)
        return logits, self._values(value.finish(top), input_ids.shape[1], response_width)

    @torch.no_grad()
    def score(self, input_ids, attention_mask, position_ids, response_width: int, width: int | None = None,
              reward_at: torch.Tensor | None = None) -> dict:
        """One shared pass for a rollout micro-batch (trunk sharing on): the policy's and the reference's logits,
        the values, and the hidden states at each model's lowest trainable layer for the PPO epochs.

        The columns may run past the rollout's own ``width`` (``Rollout.with_suffixes``: the tokens the reward
        model's rendering adds after a response, such as the chat template's end of turn). Causal attention keeps
        the first ``width`` columns what they are alone; with ``reward_at`` (each row's final column, -1 for none)
        the result also holds "reward": the reward model's score there, the value model's layers with the adapter
        off from its lowest trainable one, whose input the value path has just computed (NaN for rows without)."""
        trunk = self.trunk
        width = input_ids.shape[1] if width is None else width
        policy, value = Stack(self.policy), Stack(self.value)
        layers = len(policy.backbone.layers)
        hidden, mask, rotary = policy.start(input_ids, attention_mask, position_ids)
        shared = policy.layers(hidden, 0, trunk.common, mask, rotary, position_ids)
        at_policy = policy.layers(shared, trunk.common, trunk.policy, mask, rotary, position_ids)
        top = policy.finish(policy.layers(at_policy, trunk.policy, layers, mask, rotary, position_ids))
        logits = lm_logits(self.policy, top[:, :width], response_width + 1)
        with self.policy.disable_adapter():
            top = policy.finish(policy.layers(at_policy, trunk.policy, layers, mask, rotary, position_ids))
            reference = lm_logits(self.policy, top[:, :width], response_width + 1)
        if not trunk.common:  # nothing shared: the value model starts from its own embeddings
            shared, mask, rotary = value.start(input_ids, attention_mask, position_ids)
        at_value = value.layers(shared, trunk.common, trunk.value, mask, rotary, position_ids)
        top = value.finish(value.layers(at_value, trunk.value, layers, mask, rotary, position_ids))
        out = {"logits": logits, "reference": reference, "values": self._values(top[:, :width], width, response_width),
               "policy": at_policy[:, :width], "value": at_value[:, :width]}
        if reward_at is not None:
            out["reward"] = self._reward(value, at_value, mask, rotary, position_ids, reward_at)
        return out

    def _reward(self, value: Stack, at_value, mask, rotary, position_ids, last: torch.Tensor) -> torch.Tensor:
        """The reward model's outputs [rows, heads] at column ``last`` of each row: the value model with its adapter
        off (the reward model) from the value model's lowest trainable layer, where the two still agree."""
        rows = torch.arange(len(last), device=last.device)
        with self.value.disable_adapter():
            top = value.layers(at_value, self.trunk.value, len(value.backbone.layers), mask, rotary, position_ids)
            _, head = classifier_parts(self.value)
            scores = head(value.finish(top)[rows, last.clamp(min=0)]).float()
        return torch.where((last >= 0)[:, None], scores, torch.full_like(scores, float("nan")))


def policy_logits(policy, batch: "Rollout", response_width: int | None = None) -> torch.Tensor:
    width = response_width if response_width is not None else batch.response_ids.shape[1]
    return policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                  logits_to_keep=width + 1, use_cache=False).logits[:, :-1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-probability of each sampled token under the temperature-scaled distribution it was sampled from."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def make_optimizer(config: PPOStageConfig, parameters: list) -> torch.optim.Optimizer:
    train = config.train
    if train.optim in ("adamw_bnb_8bit", "adamw_8bit"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
    if train.optim == "sgd":
        return torch.optim.SGD(parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
    return torch.optim.AdamW(parameters, lr=train.learning_rate, weight_decay=train.weight_decay,
                             fused=train.optim == "adamw_torch_fused" or None)


