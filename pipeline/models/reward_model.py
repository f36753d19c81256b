"""A reward-model artifact as a scorer: plain AutoModelForSequenceClassification, batched, on chat-rendered text.

Scoring renders (prompt, completion) exactly as the reward stage trained on them: the user prompt and the
assistant completion through the tokenizer's chat template, the reward read at the last non-pad token. An ensemble
reward model (the reward stage's ``ensemble``) has one output per head; its reward is their mean.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError


def conversation(prompt, completion) -> list[dict]:
    """A (prompt, completion) pair as chat messages; either side may already be a message list."""
    prompt_messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    completion_messages = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    return prompt_messages + completion_messages


def reward_token_ids(tokenizer, prompts, completions) -> list[list[int]]:
    """The token ids a reward model reads for each (prompt, completion): the conversation through the chat template
    (raw concatenated text without one), cut at the tokenizer's model_max_length (at most 4096)."""
    if tokenizer.chat_template:
        ids = [tokenizer.apply_chat_template(conversation(p, c), tokenize=True, return_dict=False)
               for p, c in zip(prompts, completions)]
    else:
        ids = [tokenizer(f"{p}{c}")["input_ids"] for p, c in zip(prompts, completions)]
    limit = min(tokenizer.model_max_length, 4096)
    return [row[:limit] for row in ids]


class RewardModel:
    """A sequence-classification model with one label and its tokenizer, scoring (prompt, completion) batches.

    Conversations are tokenised with ``apply_chat_template(tokenize=True)``, as TRL's RewardTrainer does, so a judge
    scores exactly what the reward stage trained on."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        if model.config.num_labels < 1:
            raise ModelError("a reward model needs at least one output")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, batch_size: int = 16, dtype: str = "auto") -> "RewardModel":
        """Load a reward artifact (or any sequence-classification folder with one label)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .loading import torch_dtype

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a reward model folder (no config.json); name a finished reward stage")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype(dtype))
        return cls(model, tokenizer, batch_size)

    def token_ids(self, prompts, completions) -> list[list[int]]:
        """The token ids ``score`` reads for each (prompt, completion) (``reward_token_ids``)."""
        return reward_token_ids(self.tokenizer, prompts, completions)

    def score(self, prompts, completions) -> list[float]:
        return self.score_ids(self.token_ids(prompts, completions))

    def score_ids(self, ids: list[list[int]]) -> list[float]:
        """The reward of each token-id sequence (as ``token_ids`` gives them): an ensemble's mean."""
        return [sum(heads) / len(heads) for heads in self.head_scores(ids)]

    def head_scores(self, ids: list[list[int]]) -> list[list[float]]:
        """Each output of the model (one, or an ensemble's heads) for each token-id sequence, ``batch_size`` sequences
        a forward pass, right-padded, read at the last non-pad token."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        was_training = self.model.training
        self.model.eval()
        scores: list[list[float]] = []
        try:
            for start in range(0, len(ids), self.batch_size):
                rows = ids[start : start + self.batch_size]
                width = max(len(r) for r in rows)
                input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
                with torch.no_grad():
                    logits = self.model(input_ids=input_ids.to(self.model.device),
                                        attention_mask=mask.to(self.model.device)).logits
                scores += logits.float().tolist()
        finally:
            self.model.train(was_training)
        return scores
