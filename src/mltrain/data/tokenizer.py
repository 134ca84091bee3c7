"""Get the tokenizer for a data dir: a user's tokenizer.json / hub name, a byte-level BPE
trained on the corpus, or one of the two closed-vocabulary tokenizers for small experiments:
`char` (one token per distinct character of the corpus) and `bytes` (one token per byte value).

The chosen tokenizer is always copied to `<data dir>/tokenizer.json`, so the data dir is
self-describing (the manifest records its sha256) and `load_tokenizer(data_dir)` is all that
export/eval code needs. A trained BPE is cached: `tokenizer.meta.json` records the corpus
fingerprint and vocab size it was trained for, and a matching cache is reused untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mltrain.data.shards import file_sha256
from mltrain.errors import DataError
from mltrain.fsutil import atomic_write

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_META_FILE = "tokenizer.meta.json"
EOS_TOKEN = "<|endoftext|>"
# EOS tokens of common pretrained tokenizers (GPT-2/Qwen2, Llama 3, Llama 2/Mistral, Gemma).
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
TRAINED_SOURCE = "trained:bytelevel-bpe"
CHAR_TOKENIZER = "char"
BYTES_TOKENIZER = "bytes"
BUILTIN_TOKENIZERS = (CHAR_TOKENIZER, BYTES_TOKENIZER)
_BPE_RECIPE = 1  # bump when the training recipe changes, to invalidate caches


@dataclass
class TokenizerChoice:
    tokenizer: Tokenizer
    path: Path
    sha256: str
    vocab_size: int
    eos_id: int
    eos_token: str
    source: str
    cached: bool = False


def train_bpe(docs: Iterable[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    """Byte-level BPE (GPT-2 style: any byte sequence encodes, no UNK) with EOS as token 0.

    The tokenizers BPE trainer is deterministic for a fixed input order, which prepare
    guarantees, so the same corpus gives a byte-identical tokenizer.json.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if length is None and isinstance(docs, Sequence):
        length = len(docs)
    tok.train_from_iterator(docs, trainer=trainer, length=length)
    return tok


def build_char_tokenizer(docs: Iterable[str]) -> Tokenizer:
    """Every distinct character of `docs` is a token, ids in sorted (code point) order, then EOS.

    A WordLevel model over single-character pieces with a Fuse decoder: a regular tokenizer.json
    that `tokenizers` and transformers' PreTrainedTokenizerFast load as is. There is no UNK: text
    with a character outside the vocabulary cannot be encoded (see `encode_checked`).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for doc in docs:
        chars.update(doc)
    vocab = {c: i for i, c in enumerate(sorted(chars))}
    vocab[EOS_TOKEN] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOS_TOKEN])
    return tok


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255 (what ByteLevel pre-tokenizes to)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def build_bytes_tokenizer() -> Tokenizer:
    """256 tokens, id = byte value of the UTF-8 text, then EOS (256): any text encodes.

    A byte-level BPE without merges, so the file is the same kind as a trained one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(_byte_chars())}
    vocab[EOS_TOKEN] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN])
    return tok


def encode_checked(tok: Tokenizer, text: str, where: str) -> list[int]:
    """Encode without special tokens; a closed vocabulary's unknown characters become one clear error."""
    try:
        return tok.encode(text, add_special_tokens=False).ids
    except Exception as e:  # tokenizers raises plain Exception ("Missing [UNK] token")
        vocab = tok.get_vocab(with_added_tokens=False)
        unknown = sorted({c for c in text if c not in vocab})
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise DataError(
                f"{where}: {len(unknown)} characters are not in the run's character vocabulary: {shown}"
            ) from None
        raise DataError(f"{where}: cannot tokenize: {e}") from None


def find_eos(tok: Tokenizer, where: str) -> tuple[str, int]:
    for name in EOS_CANDIDATES:
        tid = tok.token_to_id(name)
        if tid is not None:
            return name, tid
    raise DataError(f"{where}: tokenizer has no end-of-document token (looked for {', '.join(EOS_CANDIDATES)})")


def _save_text(path: Path, text: str) -> None:
    try:
        atomic_write(path, text)
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None


def _load_user_tokenizer(spec: str) -> Tokenizer:
    from tokenizers import Tokenizer

    path = Path(spec).expanduser()
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        path = path / TOKENIZER_FILE
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception for malformed JSON
            raise DataError(f"{path}: not a valid tokenizer.json: {e}") from None
    if path.suffix == ".json" or spec.startswith((".", "/", "~")):
        raise DataError(f"data.tokenizer: {path}: no such file")
    reason = hub_unreachable_reason()
    if reason:
        raise DataError(
            f"data.tokenizer: {spec!r}: not a local file, and the Hugging Face hub is unreachable: {reason}"
        )
    try:
        return Tokenizer.from_pretrained(spec)
    except Exception as e:
        raise DataError(
            f"data.tokenizer: {spec!r}: not a local file and cannot be fetched from the Hugging Face hub "
            f"(offline? gated?): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def hub_unreachable_reason(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used right now, or None. Checked up front because the
    hub client retries for ~25 s with log spam before failing when offline."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or e})"


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resolve_tokenizer(
    tokenizer_spec: str | None,
    docs: Callable[[], Iterable[str]],
    corpus_fingerprint: str,
    vocab_size: int,
    data_dir: Path,
    max_vocab_size: int | None = None,
) -> TokenizerChoice:
    """Load or train the tokenizer and save it as `<data_dir>/tokenizer.json`.

    `docs()` returns a fresh iterator over the corpus; it is only called when a BPE is trained
    or a character vocabulary is collected.

    Every check (vocab fits the model, an EOS token exists) runs before anything is written,
    so a rejected tokenizer leaves a previously prepared data dir untouched.
    """
    from tokenizers import Tokenizer

    path = data_dir / TOKENIZER_FILE
    meta_path = data_dir / TOKENIZER_META_FILE
    want = {"recipe": _BPE_RECIPE, "corpus_fingerprint": corpus_fingerprint, "vocab_size": vocab_size}
    tok = None
    cached = False
    if tokenizer_spec == CHAR_TOKENIZER:
        tok = build_char_tokenizer(docs())
        source = CHAR_TOKENIZER
    elif tokenizer_spec == BYTES_TOKENIZER:
        tok = build_bytes_tokenizer()
        source = BYTES_TOKENIZER
    elif tokenizer_spec:
        tok = _load_user_tokenizer(tokenizer_spec)
        source = tokenizer_spec
    else:
        source = TRAINED_SOURCE
        meta = _read_meta(meta_path)
        if path.is_file() and {k: meta.get(k) for k in want} == want and meta.get("sha256") == file_sha256(path):
            try:
                tok = Tokenizer.from_file(str(path))
                cached = True
            except Exception:
                tok = None
        if tok is None:
            tok = train_bpe(docs(), vocab_size)
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    if max_vocab_size is not None and n_vocab > max_vocab_size:
        raise DataError(
            f"tokenizer {source}: vocab size {n_vocab} is larger than model.vocab_size {max_vocab_size}; "
            "use a smaller tokenizer or a larger model vocab"
        )
    eos_token, eos_id = find_eos(tok, source)
    if not cached:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"data.dir {data_dir}: cannot create: {e.strerror or e}") from None
        _save_text(path, tok.to_str())
        if tokenizer_spec:
            meta_path.unlink(missing_ok=True)
        else:
            _save_text(meta_path, json.dumps({**want, "sha256": file_sha256(path)}, indent=2) + "\n")
    return TokenizerChoice(
        tokenizer=tok,
        path=path,
        sha256=file_sha256(path),
        vocab_size=n_vocab,
        eos_id=eos_id,
        eos_token=eos_token,
        source=source,
        cached=cached,
    )


def load_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The tokenizer a prepared data dir was made with (for sampling, eval, export)."""
    from tokenizers import Tokenizer

    path = Path(data_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer; run `mltrain data prepare RUN.yaml` first")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a valid tokenizer.json: {e}") from None
