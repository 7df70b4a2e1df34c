"""Generating text: feed the prime once, then one model step per character.

The recurrent state is carried between steps, so each new character costs one step of the
network (never a re-read of the text so far). Several samples are drawn as one batch.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from charrnn.errors import UsageError
from charrnn.model import CharRNN
from charrnn.vocab import UNK_ID, Vocab

FLUSH_EVERY = 32  # generated steps between hand-offs to the caller (bounds device syncs)
GREEDY_BELOW = torch.finfo(torch.float32).tiny  # temperatures this small act as 0 (argmax)


@dataclass(frozen=True)
class SampleSettings:
    length: int = 500  # characters to generate per sample, prime not counted
    temperature: float = 1.0  # >0 scales logits; 0 is greedy argmax
    top_k: int | None = None  # keep only the k most likely characters
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    num_samples: int = 1  # drawn together as one batch
    seed: int | None = None  # same seed, same device, same text

    def validate(self, vocab: Vocab) -> None:
        check_temperature(self.temperature)
        if self.length < 0:
            raise UsageError(f"--length must be 0 or more, not {self.length}")
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be at least 1, not {self.num_samples}")
        choices = vocab.size - 1  # <unk> is never sampled
        if self.top_k is not None and not 1 <= self.top_k <= choices:
            raise UsageError(f"--top-k must be between 1 and the vocabulary's {choices} "
                             f"characters, not {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise UsageError(f"--top-p must be in (0, 1], not {self.top_p}")


def check_temperature(value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) \
            or math.isinf(value) or value < 0:
        raise UsageError(f"temperature must be a finite number >= 0 (0 means greedy), "
                         f"not {value}")


@dataclass
class Chunk:
    """Characters generated since the last chunk: one string per sample, and log-probs."""

    texts: list[str]
    logprobs: list[list[float]] = field(default_factory=list)


@dataclass
class Sample:
    """One finished sample, as `charrnn sample --format json` writes it."""

    temperature: float
    prime: str
    text: str  # the generated characters, prime not included, stop text included
    logprobs: list[float]  # natural-log probability of each character of `text`

    def to_dict(self) -> dict:
        # float32 log-probs carry about seven significant digits; six decimals keep JSON short.
        return {"temperature": self.temperature, "prime": self.prime, "text": self.text,
                "logprobs": [round(lp, 6) for lp in self.logprobs]}


class Sampler:
    def __init__(self, model: CharRNN, vocab: Vocab, device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.vocab = vocab
        self.device = torch.device(device)

    def encode_prime(self, prime: str) -> list[int]:
        text = self.vocab.normalize(prime)
        unknown = self.vocab.unknown_chars(text)
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            plural = "s" if len(unknown) != 1 else ""
            raise UsageError(f"the prime text has {len(unknown)} character{plural} the model "
                             f"cannot write (not in its vocabulary): {shown}{more}; remove them "
                             "from the prime text")
        return self.vocab.encode(text).tolist()

    def prepare_stop(self, stop: str) -> str:
        """The stop text as the model would write it; one it cannot write is an error."""
        text = self.vocab.normalize(stop)
        if not text:
            raise UsageError("--stop needs at least one character")
        unknown = self.vocab.unknown_chars(text)
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20])
            raise UsageError(f"the stop text has characters the model never writes: {shown}; "
                             "it could never end a sample")
        return text

    def start_ids(self, prime_ids: list[int]) -> list[int]:
        if prime_ids:
            return prime_ids
        # No prime: start as if after a line break (or the most common character).
        if "\n" in self.vocab.stoi:
            return [self.vocab.stoi["\n"]]
        counts = self.vocab.counts
        return [1 + max(range(len(counts)), key=counts.__getitem__)]

    @torch.inference_mode()
    def generate(self, settings: SampleSettings, prime: str = "",
                 with_logprobs: bool = False) -> Iterator[Chunk]:
        """Yield the generated text in chunks (the prime itself is not yielded)."""
        settings.validate(self.vocab)
        ids = self.start_ids(self.encode_prime(prime))
        batch = settings.num_samples
        generator = torch.Generator(device=self.device)
        generator.manual_seed(settings.seed if settings.seed is not None
                              else int.from_bytes(os.urandom(8), "little") >> 1)
        prime_t = torch.tensor(ids, device=self.device).unsqueeze(0).expand(batch, -1)
        logits, _, state = self.model(prime_t)  # (B, P, V): the whole prime in one call
        logits = logits[:, -1].float()  # (B, V)
        out = torch.empty(batch, FLUSH_EVERY, dtype=torch.long, device=self.device)
        logp = torch.empty(batch, FLUSH_EVERY, device=self.device) if with_logprobs else None
        done = 0
        while done < settings.length:
            n = min(FLUSH_EVERY, settings.length - done)
            for i in range(n):
                nxt, lp = self._choose(logits, settings, generator, with_logprobs)
                out[:, i] = nxt
                if lp is not None:
                    logp[:, i] = lp
                logits, state = self.model.step(nxt, state)
                logits = logits.float()
            done += n
            rows = out[:, :n].tolist()  # one device sync per chunk
            yield Chunk([self.vocab.decode(r) for r in rows],
                        logp[:, :n].tolist() if logp is not None else [])

    def _choose(self, logits: torch.Tensor, settings: SampleSettings,
                generator: torch.Generator, with_logprobs: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = logits.clone()
        logits[:, UNK_ID] = -math.inf  # <unk> stands for "some character": never emit it
        # Below float32's smallest normal number a temperature is greedy in all but name (and
        # would divide by zero once cast).
        if settings.temperature < GREEDY_BELOW:
            nxt = logits.argmax(dim=-1)  # (B,)
            return nxt, _logprob_of(logits, nxt) if with_logprobs else None
        # Shifted to a maximum of 0 first, so that a tiny temperature cannot overflow to inf/inf.
        logits = logits - logits.amax(dim=-1, keepdim=True)
        logits = logits / settings.temperature  # sharper (<1) or flatter (>1)
        if settings.top_k is not None:
            kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, -math.inf)
        if settings.top_p is not None:
            logits = _nucleus(logits, settings.top_p)
        probs = torch.softmax(logits, dim=-1)  # (B, V)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        return nxt, _logprob_of(logits, nxt) if with_logprobs else None

    def sample_text(self, settings: SampleSettings, prime: str = "") -> list[str]:
        """Whole samples as strings (prime not included)."""
        texts = [""] * settings.num_samples
        for chunk in self.generate(settings, prime):
            texts = [t + c for t, c in zip(texts, chunk.texts, strict=True)]
        return texts

    def stream(self, settings: SampleSettings, prime: str = "", stop: str | None = None,
               with_logprobs: bool = False) -> Iterator[Chunk]:
        """`generate`, each sample ending at the first `stop` that its characters complete.

        The stop text is kept. An occurrence may begin in the prime but must end in generated
        text. Generation ends once every sample has stopped, within one chunk of steps.
        """
        if stop is None:
            yield from self.generate(settings, prime, with_logprobs)
            return
        stop = self.prepare_stop(stop)
        keep = len(stop) - 1  # characters of a possible partial match carried between chunks
        tails = [self.vocab.normalize(prime)[-keep:] if keep else ""] * settings.num_samples
        ended = [False] * settings.num_samples
        for chunk in self.generate(settings, prime, with_logprobs):
            texts, logprobs = [], []
            for i, piece in enumerate(chunk.texts):
                probs = chunk.logprobs[i] if chunk.logprobs else []
                if ended[i]:
                    piece, probs = "", []
                else:
                    window = tails[i] + piece
                    found = window.find(stop)
                    if found >= 0:
                        cut = found + len(stop) - len(tails[i])
                        piece, probs, ended[i] = piece[:cut], probs[:cut], True
                    elif keep:
                        tails[i] = window[-keep:]
                texts.append(piece)
                logprobs.append(probs)
            yield Chunk(texts, logprobs if with_logprobs else [])
            if all(ended):
                return  # closing `generate` stops the model early

    def samples(self, settings: SampleSettings, prime: str = "", stop: str | None = None,
                with_logprobs: bool = False) -> list[Sample]:
        """Whole samples with what produced them, each ended at `stop` when given."""
        texts: list[list[str]] = [[] for _ in range(settings.num_samples)]
        logprobs: list[list[float]] = [[] for _ in range(settings.num_samples)]
        for chunk in self.stream(settings, prime, stop, with_logprobs):
            for i, piece in enumerate(chunk.texts):
                texts[i].append(piece)
                if with_logprobs:
                    logprobs[i].extend(chunk.logprobs[i])
        return [Sample(settings.temperature, prime, "".join(t), lp)
                for t, lp in zip(texts, logprobs, strict=True)]


def _logprob_of(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely characters whose probabilities first sum to at least top_p."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this char
    sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
    return torch.full_like(logits, -math.inf).scatter(1, order, sorted_logits)


def parse_temperatures(text: str) -> list[float]:
    """'0.8' or '0.2,0.5,1.0' -> floats, each checked; anything else is a clean usage error."""
    values = []
    for part in str(text).split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise UsageError(f"temperature must be a number >= 0 (0 means greedy), not "
                             f"{part.strip()!r}") from None
        check_temperature(value)
        values.append(value)
    return values


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def parse_stop(text: str) -> str:
    r"""The --stop value with \n, \t, \r and \\ read as escapes, so '\n\n' means a blank line."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def samples_json(samples: list[Sample], one_line: bool = False) -> str:
    """A JSON list of samples: one object per line, or all on one line (one reply per prompt)."""
    objects = [json.dumps(s.to_dict(), ensure_ascii=False) for s in samples]
    if one_line:
        return "[" + ", ".join(objects) + "]\n"
    return "[\n" + ",\n".join(objects) + "\n]\n"
