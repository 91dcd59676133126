"""Stop strings over streamed text: nothing that could begin a stop string is shown early, the text
ends right before the first match, and text without a match comes out whole."""

import random

import pytest

from moedge.runtime import InputError
from moedge.runtime.stop_strings import StopStrings


def _shown(pieces: list[str], stops: list[str]) -> tuple[list[str], str | None]:
    matcher = StopStrings(stops)
    shown = [matcher.feed(p) for p in pieces]
    if matcher.matched is None:
        shown.append(matcher.flush())
    return shown, matcher.matched


def test_a_stop_string_split_over_pieces_is_held_back_and_cut():
    shown, matched = _shown(["Hello <", "/", "s> world"], ["</s>"])
    assert shown == ["Hello ", "", ""] and matched == "</s>"


def test_a_false_start_is_released_once_it_cannot_match():
    shown, matched = _shown(["ab<", "/x", "yz"], ["</s>"])
    assert shown == ["ab", "</x", "yz", ""] and matched is None


def test_held_back_text_comes_out_at_the_end():
    shown, matched = _shown(["one\n"], ["\n\n"])
    assert shown == ["one", "\n"] and matched is None


def test_the_earliest_match_of_several_wins():
    shown, matched = _shown(["hello world"], ["world", "lo w"])
    assert "".join(shown) == "hel" and matched == "lo w"


def test_nothing_is_shown_after_a_match():
    matcher = StopStrings(["x"])
    assert matcher.feed("axb") == "a" and matcher.feed("more") == "" and matcher.flush() == ""


def _held(text: str, stops: list[str]) -> int:
    """How much of the end of `text` could still begin a stop string (the longest such end)."""
    return max([k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])], default=0)


def _first_completed(text: str, stops: list[str]) -> tuple[str, str | None, int]:
    """Character by character: the text before the first stop string to be completed, it, and where it ends."""
    for end in range(len(text) + 1):
        hits = [(text.find(s), s) for s in stops if s in text[:end]]
        if hits:
            return text[:min(hits)[0]], min(hits)[1], end
    return text, None, len(text)


def test_random_texts_split_anywhere_end_where_the_whole_text_ends():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("ab\n") for _ in range(rng.randrange(0, 30)))
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randrange(1, 5))) for _ in range(rng.randrange(1, 4))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(0, 6))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        want, want_stop, end = _first_completed(text, stops)
        shown, matched = _shown(pieces, stops)
        assert ("".join(shown), matched) == (want, want_stop), (pieces, stops)
        fed = ""
        for i, piece in enumerate(pieces):  # before the match: all but what could begin a stop string is shown
            fed += piece
            if len(fed) >= end and want_stop is not None:
                break
            assert "".join(shown[:i + 1]) == fed[:len(fed) - _held(fed, stops)], (pieces, stops)


@pytest.mark.parametrize("stops", [[""], "x", [1]])
def test_bad_stop_strings_are_refused(stops):
    with pytest.raises(InputError, match="stop strings must be a list of non-empty strings"):
        StopStrings(stops)
