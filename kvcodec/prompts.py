"""How a prompt is split between sender and receiver (exact texts: ``specs/prompts.md``).

The sender prefills the **context** and transmits its KV cache; the receiver appends the
**query** (and, for a chat model, the rest of the chat template) on top of the received
cache. The two token sequences are cut from one prompt, so that sending the first as a KV
cache and prefilling the second reproduces the prompt a user would have given.

- Chat (instruction) models, e.g. SmolLM2-135M-Instruct: the model's chat template with
  one user turn ``context + separator + query`` and the generation prompt; the cut is
  made just before the query.
- Base models, e.g. Gemma-3-270M: plain text ``context + separator + query``, with the
  tokenizer's BOS token (if it adds one) at the start of the context.

Question answering uses the query ``"Question: {question}\\nAnswer:"`` for base models and
``"Question: {question}\\nAnswer with a short phrase."`` for chat models; multiple choice
uses the task's answer cue (``"Answer:"``) right after the listed choices.
"""

from __future__ import annotations

import attrs

_SENTINEL = "\u2063KVCODEC-QUERY\u2063"
CHAT_QA_INSTRUCTION = "Answer with a short phrase."
CHAT_CHOICE_INSTRUCTION = "Answer with the letter of the correct choice."


@attrs.frozen
class SplitPrompt:
    context_ids: list[int]  # prefilled by the sender; its KV cache is transmitted
    question_ids: list[int]  # prefilled by the receiver on top of the decoded cache
    answer_ids: list[int] = attrs.field(factory=list)  # gold continuation, for teacher-forced NLL


def qa_query(question: str, *, chat: bool) -> str:
    """The receiver's text for a question: ``Question: …`` plus the answer cue or instruction."""
    return f"Question: {question}\n" + (CHAT_QA_INSTRUCTION if chat else "Answer:")


def split_text(tokenizer, context: str, query: str, *, chat: bool, separator: str = "\n\n") -> SplitPrompt:
    """Token ids of ``context`` (sender) and ``query`` (receiver), cut from one prompt."""
    if chat:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{context}{separator}{_SENTINEL}"}], tokenize=False, add_generation_prompt=True
        )
        cut = full.index(_SENTINEL)
        head, tail = full[:cut], full[cut:].replace(_SENTINEL, query)
        return SplitPrompt(
            tokenizer(head, add_special_tokens=False)["input_ids"],
            tokenizer(tail, add_special_tokens=False)["input_ids"],
        )
    return SplitPrompt(
        tokenizer(f"{context}{separator}", add_special_tokens=True)["input_ids"],
        tokenizer(query, add_special_tokens=False)["input_ids"],
    )


def split_prompt(tokenizer, context: str, question: str, *, chat: bool) -> SplitPrompt:
    """Token ids of the sender's and the receiver's part of a question-answering prompt."""
    return split_text(tokenizer, context, qa_query(question, chat=chat), chat=chat)


def answer_ids(tokenizer, answer: str, *, chat: bool) -> list[int]:
    """Token ids of a gold answer as the model would write it after the query: at the start
    of the assistant turn (chat) or after ``"Answer:"`` with a leading space (base)."""
    return tokenizer(answer if chat else f" {answer}", add_special_tokens=False)["input_ids"]


def task_prompt(tokenizer, task, sample, *, chat: bool) -> SplitPrompt:
    """The split prompt of an evaluation sample (see :mod:`kvcodec.tasks`), with the ids of
    its first gold answer (or gold choice letter) for the teacher-forced NLL."""
    if task.kind == "choice":
        query = CHAT_CHOICE_INSTRUCTION if chat else task.answer_cue
        parts = split_text(tokenizer, sample.context, query, chat=chat, separator="")
        gold = "ABCDEFGHIJ"[sample.label] if sample.label is not None else ""
    else:
        parts = split_text(tokenizer, sample.context, qa_query(sample.question, chat=chat), chat=chat)
        gold = sample.answers[0] if sample.answers else ""
    ids = answer_ids(tokenizer, gold, chat=chat) if gold else []
    return attrs.evolve(parts, answer_ids=ids)
