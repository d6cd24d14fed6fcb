"""How a prompt is split between sender and receiver.

The sender prefills the **context** and transmits its KV cache; the receiver appends the
**question** (and, for a chat model, the rest of the chat template) on top of the received
cache. ``split_prompt`` returns the two token sequences, such that sending the first as a
KV cache and prefilling the second reproduces the prompt a user would have given.

- Chat (instruction) models, e.g. SmolLM2-135M-Instruct: the model's chat template with
  one user turn ``"{context}\\n\\nQuestion: {question}"`` and the generation prompt; the cut
  is made just before ``Question:``.
- Base models, e.g. Gemma-3-270M: plain text ``"{context}\\n\\nQuestion: {question}\\nAnswer:"``
  with the tokenizer's BOS token at the start of the context.
"""

from __future__ import annotations

import attrs

_SENTINEL = "\u2063KVCODEC-QUESTION\u2063"


@attrs.frozen
class SplitPrompt:
    context_ids: list[int]  # prefilled by the sender; its KV cache is transmitted
    question_ids: list[int]  # prefilled by the receiver on top of the decoded cache


def split_prompt(tokenizer, context: str, question: str, *, chat: bool) -> SplitPrompt:
    """Token ids of the sender's and the receiver's part of a question-answering prompt."""
    if chat:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{context}\n\n{_SENTINEL}"}], tokenize=False, add_generation_prompt=True
        )
        cut = full.index(_SENTINEL)
        head, tail = full[:cut], full[cut:].replace(_SENTINEL, f"Question: {question}")
        return SplitPrompt(
            tokenizer(head, add_special_tokens=False)["input_ids"],
            tokenizer(tail, add_special_tokens=False)["input_ids"],
        )
    return SplitPrompt(
        tokenizer(f"{context}\n\n", add_special_tokens=True)["input_ids"],
        tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"],
    )
