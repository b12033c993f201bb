"""CaseOps: the lossless case transform of the #1855 record's tokenizer (PR #1729).

Text is lower-cased word by word (a word = a maximal run of ASCII letters) and the case
goes into control symbols the tokenizer holds as single pieces (ids 4-7 of
fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model):
  TITLE   U+E001 before a word whose first letter only is upper case ("The" -> T+"the")
  ALLCAPS U+E002 before a word of >= 2 letters, all upper case ("NASA" -> A+"nasa")
  CAPNEXT U+E003 before each upper-case letter after the first of any other word;
          such a word starting upper case also gets TITLE ("iPhone" -> "i"+C+"phone",
          "McDonald" -> T+"mc"+C+"donald"; a lone "A" is TITLE+"a")
  ESC     U+E004 before a literal control character of the input.
Only ASCII letters change case, so every other character keeps its bytes; a control
symbol stands for 0 bytes of the original text unless escaped. That is what makes the
per-token byte sidecar (pgolf.data.sidecar) exact: bpb is charged on the original bytes.
Decoding a tokenizer's output is exact too, except where its NFKC step turned a non-ASCII
character into ASCII letters beside a marker (e.g. "ﬁ" + TITLE): the counts, taken from
the input's surfaces, are unaffected.
"""

import re
from typing import Iterable

from pgolf.errors import PgolfError

CASEOPS_TITLE = "\ue001"
CASEOPS_ALLCAPS = "\ue002"
CASEOPS_CAPNEXT = "\ue003"
CASEOPS_ESC = "\ue004"
CASEOPS_SYMBOLS = (CASEOPS_TITLE, CASEOPS_ALLCAPS, CASEOPS_CAPNEXT, CASEOPS_ESC)
# The name the record's scripts give this transform (its tokenizer manifests carry it).
CASEOPS_NAME = "lossless_caps_caseops_v1"
_CASEOPS_TOKENS = re.compile("[A-Za-z]+|[\ue001-\ue004]")


class CaseOpsError(PgolfError, ValueError):
    """A CaseOps-encoded string whose control symbols are misplaced (not from encode_caseops)."""


def _caseops_word(word: str) -> str:
    low = word.lower()
    if word == low:
        return word
    if len(word) >= 2 and word.isupper():
        return CASEOPS_ALLCAPS + low
    out = [CASEOPS_TITLE + low[0] if word[0].isupper() else low[0]]
    out += [CASEOPS_CAPNEXT + lc if ch.isupper() else lc for ch, lc in zip(word[1:], low[1:])]
    return "".join(out)


def encode_caseops(text: str) -> str:
    """The lower-cased stream with case control symbols; decode_caseops inverts it exactly."""
    def sub(m: re.Match) -> str:
        s = m.group(0)
        return CASEOPS_ESC + s if s in CASEOPS_SYMBOLS else _caseops_word(s)
    return _CASEOPS_TOKENS.sub(sub, text)


def _is_ascii_letter(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def decode_caseops(text: str) -> str:
    """The original text of an encode_caseops output; CaseOpsError if it is malformed."""
    out: list[str] = []
    escape = False
    word_mode = ""       # "title" | "allcaps": set by a marker, consumed by a word's first letter
    allcaps = False      # inside an ALLCAPS word
    capnext = False      # the next letter is upper case
    in_word = False
    for i, ch in enumerate(text):
        if escape:
            if word_mode or capnext:
                raise CaseOpsError(f"CaseOps text: escaped symbol at {i} where a letter must follow a case marker")
            out.append(ch)
            escape, in_word, allcaps = False, False, False
            continue
        if ch == CASEOPS_ESC:
            escape = True
        elif ch in (CASEOPS_TITLE, CASEOPS_ALLCAPS):
            if word_mode or in_word or capnext:
                raise CaseOpsError(f"CaseOps text: word case marker at {i} inside a word or after another marker")
            word_mode = "title" if ch == CASEOPS_TITLE else "allcaps"
        elif ch == CASEOPS_CAPNEXT:
            if capnext:
                raise CaseOpsError(f"CaseOps text: two CAPNEXT markers in a row at {i}")
            capnext = True
        elif _is_ascii_letter(ch):
            if not in_word:
                allcaps = word_mode == "allcaps"
                upper = bool(word_mode) or capnext
                in_word = True
            elif word_mode:
                raise CaseOpsError(f"CaseOps text: word case marker inside a word at {i}")
            else:
                upper = allcaps or capnext
            out.append(ch.upper() if upper else ch)
            word_mode, capnext = "", False
        else:
            if word_mode or capnext:
                raise CaseOpsError(f"CaseOps text: case marker not followed by an ASCII letter at {i}")
            out.append(ch)
            in_word, allcaps = False, False
    if escape or word_mode or capnext:
        raise CaseOpsError("CaseOps text: ends with a dangling marker")
    return "".join(out)


def caseops_piece_bytes(surfaces: Iterable[str]) -> list[int]:
    """UTF-8 bytes of the ORIGINAL text behind each token, given the tokens' surfaces.

    surfaces are the exact slices of the CaseOps-encoded input each token covers, in order
    (SentencePiece's proto `surface`). A control symbol is worth 0 bytes unless escaped; an
    escape can sit in one token and its literal in the next, so the state crosses tokens.
    Every other character is worth its own UTF-8 length, case changes being ASCII to ASCII.
    """
    counts, escape = [], False
    for surface in surfaces:
        n = 0
        for ch in surface:
            if escape:
                n += len(ch.encode("utf-8"))
                escape = False
            elif ch == CASEOPS_ESC:
                escape = True
            elif ch not in CASEOPS_SYMBOLS:
                n += 1 if ch < "\x80" else len(ch.encode("utf-8"))
        counts.append(n)
    if escape:
        raise CaseOpsError("CaseOps text: ends with a dangling ESC marker")
    return counts


def tokenizer_has_caseops(sp) -> bool:
    """True if a SentencePiece model holds the control symbols as pieces. Its byte tables then
    charge each marker 3 bytes (they are user-defined pieces), so its eval needs the sidecar."""
    return all(sp.piece_to_id(s) != sp.unk_id() for s in CASEOPS_SYMBOLS)
