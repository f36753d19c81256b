"""The models of a PPO run: policy and value model as one trained module, the frozen reference, the optimizer."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import PipelineError

from ..ppo_config import PPOStageConfig
from .rollout import Rollout


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

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value

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

    def forward(self, input_ids, attention_mask, position_ids, response_width: int):
        # Only the last response_width + 1 positions go through the LM head: with a 49k vocabulary the head costs
        # more than the transformer on short sequences.
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             logits_to_keep=response_width + 1, use_cache=False).logits[:, :-1]
        backbone, head = classifier_parts(self.value)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        width = input_ids.shape[1]
        values = head(hidden[:, width - response_width - 1 : width - 1]).squeeze(-1)
        return logits, values.float()


def policy_logits(policy, batch: "Rollout", response_width: int | None = None) -> torch.Tensor:
    width = response_width if response_width is not None else batch.response_ids.shape[1]
    return policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                  logits_to_keep=width + 1, use_cache=False).logits[:, :-1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-probability of each sampled token under the temperature-scaled distribution it was sampled from."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def frozen_copy(model):
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def make_optimizer(config: PPOStageConfig, parameters: list) -> torch.optim.Optimizer:
    train = config.train
    if train.optim in ("adamw_bnb_8bit", "adamw_8bit"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
    if train.optim == "sgd":
        return torch.optim.SGD(parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
    return torch.optim.AdamW(parameters, lr=train.learning_rate, weight_decay=train.weight_decay,
                             fused=train.optim == "adamw_torch_fused" or None)


