"""The paper's per-task prompts (one-word summary prompts).

Templates use ``{text}`` for the item's text; the image placeholder is inserted
by each adapter in the position its processor expects (before the text).
"""

from __future__ import annotations

PROMPTS: dict[str, str] = {
    "text": "{text}\nSummarize the above sentence in one word: ",
    "image": "\nSummarize the above image in one word: ",
    # tasks 3 and 6: image + sentence
    "image_text": "{text}\nSummarize above image and sentence in one word: ",
    # task 7: image + question
    "image_question": "{text}\nSummarize the above image with the question in one word: ",
    # task 8: image + sentence
    "image_text_8": "{text}\nSummarize the above image and the sentence in one word: ",
    # raw: no instruction, the text as is
    "raw": "{text}",
}


def prompt_name(item) -> str:
    """Prompt template name for an item (its explicit ``prompt`` or its kind)."""
    if item.prompt is not None:
        if item.prompt not in PROMPTS:
            raise ValueError(
                f"unknown prompt {item.prompt!r} for item {item.id!r}; "
                f"choose one of {sorted(PROMPTS)}"
            )
        return item.prompt
    return item.kind


def render_prompt(item) -> tuple[str, tuple[int, int] | None]:
    """Fill an item's prompt template.

    Returns
    -------
    text : str
        The prompt text without the image placeholder.
    span : (start, end) | None
        Character span of the item's own text inside ``text`` (None if no text).
    """
    template = PROMPTS[prompt_name(item)]
    if "{text}" not in template:
        return template, None
    start = template.index("{text}")
    body = item.text or ""
    return template.replace("{text}", body, 1), (start, start + len(body))
