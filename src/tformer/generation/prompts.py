"""Prompt builders for using a language model without fine-tuning: plain strings, nothing model-specific.

GPT-2 (Radford et al. 2019) showed that a language model performs tasks when the task is written into its
context: a summary after "TL;DR:" (section 3.6), French after example pairs "english sentence = french
sentence" and a final "english sentence =" (3.7), answers after example question-answer pairs or a
document and a final "A:" (3.5, 3.8). GPT-3 (Brown et al. 2020, section 2) names the settings by the
number of solved examples in the context: zero-shot (only a task description, or none), one-shot (one
example) and few-shot (K examples, "as many as fit in the context window"); the model completes the last,
unsolved one. No weights are updated in any of them.

The trailing space. The prompt ends with the output prefix itself ("Output:", "A:", "TL;DR:"), never with a
space after it. BPE tokenizers such as GPT-2's attach a space to the word that follows it (" Paris" is one
token), so in training text a space is almost never a token of its own before a word; a prompt ending in
"A: " makes the model continue from that rare lone space. Let the completion (or each candidate given to
tformer.generation.scoring.choose) begin with the space instead: "A:" + " Paris". For the same reason the
solved examples read "Output: answer", one space inserted after an output prefix that does not already end
in whitespace.
"""

from __future__ import annotations

from collections.abc import Sequence


def _answer(output_prefix: str, answer: str) -> str:
    """The output prefix followed by its answer, a space between them unless the prefix ends in one."""
    if output_prefix and not output_prefix[-1].isspace():
        return f"{output_prefix} {answer}"
    return output_prefix + answer


def few_shot_prompt(examples: Sequence[tuple[str, str]], query: str, instruction: str = "",
                    input_prefix: str = "Input: ", output_prefix: str = "Output:", separator: str = "\n\n",
                    input_output_separator: str = "\n") -> str:
    """A K-shot prompt: an optional instruction, K solved examples, then the query awaiting its output.

    0 examples is zero-shot, 1 one-shot, K few-shot (GPT-3's terms). With the defaults and one example:

        Input: 2 + 2
        Output: 4

        Input: 3 + 5
        Output:

    The blocks (instruction, examples, query) are joined by `separator` (GPT-3 uses one or two newlines
    depending on the task); input and output by `input_output_separator`. GPT-2's translation prompt is
    few_shot_prompt(pairs, english, input_prefix="", output_prefix="=", separator="\\n",
    input_output_separator=" "), which gives "english = french" lines and ends with "english =".
    The prompt ends with output_prefix exactly, no trailing space (see the module docstring).
    """
    blocks = [instruction] if instruction else []
    for source, target in examples:
        blocks.append(f"{input_prefix}{source}{input_output_separator}{_answer(output_prefix, target)}")
    blocks.append(f"{input_prefix}{query}{input_output_separator}{output_prefix}")
    return separator.join(blocks)


def tldr_prompt(text: str) -> str:
    """GPT-2's zero-shot summarization prompt (section 3.6): the article followed by "\\nTL;DR:"."""
    return text + "\nTL;DR:"


def qa_prompt(question: str, context: str = "", examples: Sequence[tuple[str, str]] = ()) -> str:
    """Question answering as GPT-2 prompts it: an optional document, solved "Q: ... A: ..." pairs, a final "A:".

    GPT-2 answered CoQA from the document, the conversation so far and a final "A:" (section 3.5), and Natural
    Questions after example question-answer pairs (section 3.8). Lines are joined by single newlines:

        <context>
        Q: <example question>
        A: <example answer>
        Q: <question>
        A:
    """
    return few_shot_prompt(examples, question, instruction=context, input_prefix="Q: ", output_prefix="A:",
                           separator="\n")
