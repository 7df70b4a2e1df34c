"""Generating text: feed the prime once, then one model step per character.

The recurrent state is carried between steps, so each new character costs one step of the
network (never a re-read of the text so far). Several samples are drawn as one batch.

Rows of a batch are independent: each row draws by its own rules (temperature, top-k,
top-p), and a request (one prime, `num_samples` rows) draws its random numbers from its own
generator: at every step, `num_samples` uniforms, row i taking the i-th. So the text of a
request depends only on its seed and options, never on what else shares the batch; a server
that batches many users' requests together (continuous batching) returns what
`charrnn sample` prints. Each row turns its uniform into a character by the inverse of the
cumulative distribution: one cumulative sum and one search, cheaper than a general
multinomial draw.

`beam_search` instead returns the most probable continuations under the model's own
distribution: deterministic, no random numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from charrnn import devices, fileio, memory, speed
from charrnn.config import plain_value
from charrnn.errors import Cancelled, CheckpointError, UsageError
from charrnn.model import CharRNN, State, join_streams, map_state
from charrnn.stepper import Carry, Stepper, stepper_for
from charrnn.vocab import UNK_ID, Vocab

FLUSH_EVERY = 32  # generated steps between hand-offs to the caller (bounds device syncs)
GREEDY_BELOW = torch.finfo(torch.float32).tiny  # temperatures this small act as 0 (argmax)
# Past this, every character is as likely as any other to float32's precision: higher
# temperatures are drawn as this one (a larger divisor would overflow float32).
FLATTEST = 1e6
MAX_SEED = 2**64 - 1  # seeds are 0 to this: what torch's generators accept, as 64 bits
MAX_PRIME_BYTES = 1 << 20  # a prime file larger than this is a mistake, not a prompt
# `start_many` (`start_from_ids`) remembers what reading the last few primes gave: a server's
# requests mostly share a few (none at all, or a page's example), and reading one, even a
# single character, cost a 64-stream batch as much as a step. Longer primes are rarely sent
# twice.
REMEMBERED_PRIMES = 64
REMEMBERED_PRIME_CHARS = 256
# A prime is read this many characters per call (the state carried between calls): a server
# reads a long prime a piece at a time between the batch's steps, so that one user's
# 10,000-character prime does not hold everyone's text for the whole read (half a second on
# 2 cores for a 2x256 LSTM), and every path reads in the same pieces (`Sampler.read_prime`),
# so that all give the same rows.
PRIME_PIECE = 256


@dataclass(frozen=True)
class SampleSettings:
    """How to draw: the same settings and limits as `charrnn sample`'s options; checked by
    `validate` (every Sampler method that takes them calls it)."""

    length: int = 500  # characters to generate per sample, prime not counted
    temperature: float = 1.0  # >0 scales logits; 0 is greedy argmax
    top_k: int | None = None  # keep only the k most likely characters
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    num_samples: int = 1  # drawn together as one batch
    seed: int | None = None  # same seed, same device, same text
    beam: int | None = None  # beam search with this many beams instead of drawing

    def __post_init__(self) -> None:
        # numpy's numbers (a sweep over np.linspace, a seed from np.random) as the Python
        # numbers they stand for, as a config takes them: np.float32(0.8) was refused as "not
        # a finite number".
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, plain_value(getattr(self, f.name)))

    def validate(self, vocab: Vocab) -> None:
        check_temperature(self.temperature)
        self._check_types()
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be between 0 and {MAX_SEED}, not {self.seed}")
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
        if self.beam is not None:
            if self.beam < 1:
                raise UsageError(f"--beam must be at least 1, not {self.beam}")
            if self.num_samples > self.beam:
                raise UsageError(f"--num-samples {self.num_samples} asks for more "
                                 f"continuations than --beam {self.beam} keeps; raise --beam")
            if self.temperature != 1.0 or self.top_k is not None or self.top_p is not None:
                raise UsageError("--beam finds the most probable text under the model's own "
                                 "probabilities; leave out --temperature, --top-k and --top-p")


    def _check_types(self) -> None:
        """Settings built in code get what the command line and the server check on parsing:
        a seed of "7" or 2**70 stopped a server's generation loop for every request."""
        for name in ("length", "num_samples", "top_k", "seed", "beam"):
            value = getattr(self, name)
            optional = name not in ("length", "num_samples")
            if not (value is None and optional) and (
                    not isinstance(value, int) or isinstance(value, bool)):
                raise UsageError(f"{name} must be a whole number, not {value!r}")
        if self.top_p is not None and (not isinstance(self.top_p, (int, float))
                                       or isinstance(self.top_p, bool)):
            raise UsageError(f"top_p must be a number, not {self.top_p!r}")


def check_temperature(value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) \
            or math.isinf(value) or value < 0:
        raise UsageError(f"temperature must be a finite number >= 0 (0 means greedy), "
                         f"not {value!r}")


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


# ---- drawing the next character ---------------------------------------------------------------
@dataclass
class DrawRules:
    """How each row of a batch draws its next character: one entry per row."""

    temperature: torch.Tensor  # (B,) float32; below GREEDY_BELOW: greedy (argmax)
    top_k: torch.Tensor | None = None  # (B,) int64, V for rows without a limit; None: no row
    top_p: torch.Tensor | None = None  # (B,) float32, 2.0 for rows without; None: no row

    def __post_init__(self) -> None:
        # Computed once per batch, not once per character: drawing is on the per-step path.
        self.greedy = self.temperature < GREEDY_BELOW  # (B,)
        self.any_greedy = bool(self.greedy.any())
        self.scale = (1.0 / self.temperature.clamp(min=GREEDY_BELOW))[:, None]  # (B, 1)

    @classmethod
    def of(cls, settings: SampleSettings, rows: int, vocab_size: int,
           device: torch.device) -> DrawRules:
        temperature = torch.full((rows,), min(settings.temperature, FLATTEST), device=device)
        top_k = top_p = None
        if settings.top_k is not None:
            top_k = torch.full((rows,), settings.top_k, dtype=torch.long, device=device)
        if settings.top_p is not None:
            top_p = torch.full((rows,), settings.top_p, device=device)
        return cls(temperature, top_k, top_p)

    @property
    def rows(self) -> int:
        return self.temperature.shape[0]

    def select(self, rows: torch.Tensor) -> DrawRules:
        """The rules of some rows (a (R,) index), in that order."""
        return DrawRules(self.temperature[rows],
                         None if self.top_k is None else self.top_k[rows],
                         None if self.top_p is None else self.top_p[rows])

    @staticmethod
    def join(parts: Sequence[DrawRules], vocab_size: int) -> DrawRules:
        """The rules of several batches' rows, one after another."""
        def joined(name: str, missing: float) -> torch.Tensor | None:
            if all(getattr(p, name) is None for p in parts):
                return None
            return torch.cat([getattr(p, name) if getattr(p, name) is not None
                              else torch.full_like(p.temperature, missing,
                                                   dtype=torch.long if name == "top_k"
                                                   else torch.float32) for p in parts])

        return DrawRules(torch.cat([p.temperature for p in parts]),
                         joined("top_k", vocab_size), joined("top_p", 2.0))


def draw(logits: torch.Tensor, rules: DrawRules, uniforms: torch.Tensor,
         with_logprobs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The next character of every row, (B,), and its log-probability (B,) if asked.

    logits (B, V); uniforms (B,) in [0, 1), one per row. The log-probability is under the
    distribution the row drew from; a greedy row's is under the model's own (temperature 1).
    """
    logits = logits.float()
    logits.select(1, UNK_ID).fill_(-math.inf)  # <unk> stands for "some character": never emit it
    # Shifted to a maximum of 0 first, so that a tiny temperature cannot overflow to inf/inf.
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # (B, V)
    scaled = shifted * rules.scale  # sharper or flatter
    if rules.top_k is not None or rules.top_p is not None:
        scaled = _keep_most_likely(scaled, rules)
    # Inverse CDF on unnormalised probabilities (the largest is 1): normalising is one more
    # pass over the row, and the target is scaled by the total instead.
    cdf = scaled.exp().cumsum(dim=-1)
    total = cdf[:, -1:]
    # (1 - u) * total lies in (0, total]: never 0, so a character of probability 0 is never
    # chosen.
    target = torch.addcmul(total, uniforms[:, None], total, value=-1.0)  # (B, 1)
    nxt = torch.searchsorted(cdf, target).squeeze(1).clamp_(max=logits.shape[1] - 1)
    if rules.any_greedy:
        nxt = torch.where(rules.greedy, shifted.argmax(dim=-1), nxt)
    if not with_logprobs:
        return nxt, None
    under = torch.where(rules.greedy[:, None], shifted, scaled)
    return nxt, torch.log_softmax(under, dim=-1).gather(1, nxt[:, None]).squeeze(1)


def draw_uniforms(generator: torch.Generator, steps: int, rows: int, device: torch.device
                  ) -> torch.Tensor:
    """(steps, rows) uniforms: the same numbers as `steps` successive draws of `rows` (what
    the server relies on to give a request the same text whoever shares its batch)."""
    if device.type == "cpu":  # the CPU generator fills a tensor in order: one call will do
        return torch.rand(steps, rows, generator=generator)
    return torch.stack([torch.rand(rows, generator=generator, device=device)
                        for _ in range(steps)])


def _keep_most_likely(scaled: torch.Tensor, rules: DrawRules) -> torch.Tensor:
    """Each row's top-k characters, then the fewest of those whose probability reaches top-p."""
    ordered = torch.sort(scaled, dim=-1, descending=True).values  # (B, V)
    if rules.top_k is not None:
        kth = ordered.gather(1, (rules.top_k - 1)[:, None])  # (B, 1)
        ordered = ordered.masked_fill(ordered < kth, -math.inf)
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if rules.top_p is not None:
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass of the more likely ones
        keep = (before < rules.top_p[:, None]).sum(dim=-1).clamp_(min=1)  # always the likeliest
        last = ordered.gather(1, (keep - 1)[:, None])  # (B, 1): the least likely one kept
        scaled = scaled.masked_fill(scaled < last, -math.inf)
    return scaled


@dataclass
class Streams:
    """Rows generating together: their recurrent state (the stepper's carry, rows on
    dimension 1), next-character scores and rules."""

    state: Carry
    logits: torch.Tensor  # (B, V): scores for each row's next character
    rules: DrawRules

    @property
    def rows(self) -> int:
        return self.logits.shape[0]

    def advance(self, stepper: Stepper, uniforms: torch.Tensor, with_logprobs: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw every row's next character and step the model on it: (ids, logprobs)."""
        nxt, logprobs = draw(self.logits, self.rules, uniforms, with_logprobs)
        self.logits, self.state = stepper(nxt, self.state)
        return nxt, logprobs

    def select(self, rows: torch.Tensor) -> Streams:
        """Only some rows, in that order (finished ones leave)."""
        return Streams(map_state(lambda s: s[:, rows], self.state), self.logits[rows],
                       self.rules.select(rows))

    @staticmethod
    def join(parts: Sequence[Streams]) -> Streams:
        """Several batches' rows as one batch, in order (new requests join)."""
        vocab_size = parts[0].logits.shape[1]
        return Streams(join_streams([p.state for p in parts]),
                       torch.cat([p.logits for p in parts]),
                       DrawRules.join([p.rules for p in parts], vocab_size))

    def finite(self) -> torch.Tensor:
        """A 0-d bool tensor: whether every score is a number (NaN weights give NaN scores)."""
        return torch.isfinite(self.logits[:, 1:]).all()


def _rows_of(value, rows: int, dim: int = 1):  # noqa: ANN001, ANN202 - a state or a tensor
    """A state (tensors with streams on dimension 1) or a tensor of one row along `dim`, as
    `rows` copies of that row: real copies (never a view of the prime's), as the rows are
    changed in place later."""
    return map_state(lambda t: t.repeat(*(rows if d == dim else 1 for d in range(t.dim()))),
                     value)


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A request's own random numbers: seeded, or from the operating system's entropy."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None
                          else int.from_bytes(os.urandom(8), "little") >> 1)
    return generator


class PrimeReading:
    """A prime read PRIME_PIECE characters per call, its state carried between calls: a caller
    that must not stop for long (a server's generation loop) reads one piece at a time."""

    def __init__(self, sampler: Sampler, prime_ids: Sequence[int]):
        self.model, self.device = sampler.model, sampler.device
        self.ids = list(prime_ids)
        self.read = 0  # characters read so far
        self.logits: torch.Tensor | None = None  # (1, V) scores after the last one read
        self.state: State | None = None

    @property
    def done(self) -> bool:
        return self.read >= len(self.ids)

    @property
    def pieces(self) -> int:
        """The calls reading the whole prime takes."""
        return -(-len(self.ids) // PRIME_PIECE)

    @torch.inference_mode()
    def read_piece(self) -> None:
        piece = self.ids[self.read:self.read + PRIME_PIECE]
        logits, _, self.state = self.model(torch.tensor([piece], device=self.device),
                                           state=self.state)
        self.logits = logits[:, -1].float()
        self.read += len(piece)


# ---- the sampler ------------------------------------------------------------------------------
def _resolved(device: torch.device) -> torch.device:
    """`device` as one name per device: cuda as cuda:N (the current GPU), cpu:0 as cpu."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type in ("cpu", "mps"):  # one of each: cpu and cpu:0 are the same
        return torch.device(device.type)
    return device


def _eval_copy(model: CharRNN) -> CharRNN:
    """A copy of `model` in eval mode, its recurrent weights in one block again as cuDNN
    wants them (a deep copy clones each weight on its own)."""
    copied = copy.deepcopy(model).eval()
    for module in copied.modules():
        if isinstance(module, torch.nn.RNNBase):
            module.flatten_parameters()
    return copied


class Sampler:
    """Draws text from a model: `sample_text` (whole texts), `stream` (chunks as they are
    generated), `samples` (records with their settings), and `start` (rows that a caller such
    as the server's engine steps itself). One Sampler may serve several threads.

    It samples from the weights the model has when it is made. A model in training mode (a
    notebook between rounds of training) is copied, in eval mode: the caller's model keeps
    its mode (dropout on), and training it further does not change this Sampler's text. A
    model in eval mode (`load_model`'s) is used as it is, without a copy: after changing its
    weights, make a new Sampler. `device` is where the model's weights are (by default,
    where they are now).
    """

    def __init__(self, model: CharRNN, vocab: Vocab, device: torch.device | str | None = None):
        weights_on = next(model.parameters()).device
        self.device = weights_on if device is None else devices.named_device(device)
        if _resolved(self.device) != _resolved(weights_on):
            raise UsageError(f"the model's weights are on {weights_on} but the Sampler was "
                             f"asked for {self.device}: move the model there first "
                             "(model.to(device)) or leave device out")
        self.model = _eval_copy(model) if model.training else model
        self.vocab = vocab
        self._threads: dict[int, int] = {}  # streams -> the CPU threads fastest for them
        self._stepper: Stepper | None = None
        # prime ids -> (1, V) scores and state after reading them, least recently used first;
        # locked: a notebook or a server may start samples from several threads.
        self._read_primes: OrderedDict[tuple[int, ...], tuple[torch.Tensor, State]] = \
            OrderedDict()
        self._read_primes_lock = threading.Lock()

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

    def stepper(self) -> Stepper:
        """The model's one-character step, prepared from its weights when first asked for (a
        Sampler is built for weights that no longer change: training builds one per preview)."""
        if self._stepper is None:
            self._stepper = stepper_for(self.model)
        return self._stepper

    @torch.inference_mode()
    def start(self, settings: SampleSettings, prime: str = "") -> Streams:
        """`num_samples` rows that have read the prime (in one call) and await their first draw."""
        settings.validate(self.vocab)
        ids = self.start_ids(self.encode_prime(prime))
        rows = settings.num_samples
        if self.device.type == "cpu":  # a clear refusal, not the allocator's (or the OOM killer)
            memory.check_fits(memory.sampling_bytes(self.model.args, rows,
                                                    min(len(ids), PRIME_PIECE)),
                              f"{rows:,} sample{'s' if rows > 1 else ''} read together",
                              "ask for fewer samples or use a shorter prime")
        # The prime is read once and its state copied to every row: reading it per row cost
        # `rows` times the time and memory (64 rows of a 10,000-character prime held a
        # server's loop for seconds and 1.6 GB).
        return self.rows_from(settings, *self.read_prime(ids))

    def read_prime(self, prime_ids: Sequence[int]) -> tuple[torch.Tensor, State]:
        """The (1, V) scores and the state after reading a prime, PRIME_PIECE characters per
        call: the one way every path reads a prime, so that all give the same numbers."""
        reading = PrimeReading(self, prime_ids)
        while not reading.done:
            reading.read_piece()
        return reading.logits, reading.state

    def rows_from(self, settings: SampleSettings, logits: torch.Tensor, state: State
                  ) -> Streams:
        """`num_samples` rows starting from one read prime's scores (1, V) and state."""
        rows = settings.num_samples
        return Streams(self.stepper().from_state(_rows_of(state, rows)),
                       _rows_of(logits, rows, dim=0),
                       DrawRules.of(settings, rows, self.vocab.size, self.device))

    def threads_for(self, stepper: Stepper, rows: int) -> int:
        """How many CPU threads step `rows` streams fastest here (measured once per size)."""
        if self.device.type != "cpu":
            return torch.get_num_threads()
        if rows not in self._threads:
            idx = torch.ones(rows, dtype=torch.long)
            state = stepper.initial_state(rows, self.device)
            self._threads[rows] = speed.fastest_threads(lambda: stepper(idx, state))
        return self._threads[rows]

    @torch.inference_mode()
    def start_many(self, requests: Sequence[tuple[SampleSettings, str]]) -> list[Streams]:
        """`start` for several requests at once, each (settings, prime) its own Streams.

        Each different prime is read once (a burst of new requests, a server's, mostly shares
        a few), and the last REMEMBERED_PRIMES short ones are not read again. Each is read
        alone, as `start` reads it: read together, primes of one length cost one call, but
        their numbers differ from a lone reading's in the last bits, and a request's text
        must not depend on who else arrived with it.
        """
        started = []
        for settings, prime in requests:
            settings.validate(self.vocab)
            started.append((settings, tuple(self.start_ids(self.encode_prime(prime)))))
        return self.start_from_ids(started)

    @torch.inference_mode()
    def start_from_ids(self, requests: Sequence[tuple[SampleSettings, tuple[int, ...]]]
                       ) -> list[Streams]:
        """`start_many` for settings already checked and primes already encoded (with
        `start_ids`): a server's engine has done both when the request arrived."""
        ids = [prime_ids for _, prime_ids in requests]
        read: dict[tuple[int, ...], tuple[torch.Tensor, State]] = {}  # (1, V) scores, state
        for prime_ids in dict.fromkeys(ids):  # each different prime once
            with self._read_primes_lock:
                remembered = self._read_primes.get(prime_ids)
                if remembered is not None:
                    self._read_primes.move_to_end(prime_ids)
            if remembered is not None:
                read[prime_ids] = remembered
                continue
            logits, state = self.read_prime(prime_ids)
            read[prime_ids] = (logits.clone(), state)  # the scores alone, not all the prime's
            if len(prime_ids) <= REMEMBERED_PRIME_CHARS:
                with self._read_primes_lock:
                    self._read_primes[prime_ids] = read[prime_ids]
                    while len(self._read_primes) > REMEMBERED_PRIMES:
                        self._read_primes.popitem(last=False)
        return [self.rows_from(settings, *read[prime_ids])
                for (settings, _), prime_ids in zip(requests, ids, strict=True)]

    @torch.inference_mode()
    def generate(self, settings: SampleSettings, prime: str = "",
                 with_logprobs: bool = False) -> Iterator[Chunk]:
        """The generated text in chunks (the prime itself is not yielded).

        The settings, the prime and the memory the rows need are checked, and the prime read,
        when this is called: a bad request fails here, not at the first chunk asked for."""
        streams = self.start(settings, prime)
        stepper = self.stepper()
        generator = new_generator(settings.seed, self.device)
        threads = self.threads_for(stepper, settings.num_samples)
        return self._generate(streams, stepper, generator, settings, with_logprobs, threads)

    @torch.inference_mode()
    def _generate(self, streams: Streams, stepper: Stepper, generator: torch.Generator,
                  settings: SampleSettings, with_logprobs: bool, threads: int
                  ) -> Iterator[Chunk]:
        rows = settings.num_samples
        out = torch.empty(rows, FLUSH_EVERY, dtype=torch.long, device=self.device)
        logp = torch.empty(rows, FLUSH_EVERY, device=self.device) if with_logprobs else None
        done = 0
        while done < settings.length:
            n = min(FLUSH_EVERY, settings.length - done)
            # The thread count is this chunk's only, never held across a yield: a paused
            # stream (a notebook's next()) would leave it set for its caller, and two
            # interleaved streams would restore each other's.
            with speed.using_threads(threads):
                finite = streams.finite()
                uniforms = draw_uniforms(generator, n, rows, self.device)
                for i in range(n):
                    out[:, i], lp = streams.advance(stepper, uniforms[i], with_logprobs)
                    if lp is not None:
                        logp[:, i] = lp
                # Checked once per chunk: a per-step check would wait on the device each step.
                if not bool(finite & streams.finite()):
                    raise CheckpointError("the model's scores are not numbers (NaN or inf): "
                                          "its weights are damaged or its training diverged; "
                                          "use another checkpoint")
                ids = out[:, :n].tolist()  # one device sync per chunk
            done += n
            yield Chunk([self.vocab.decode(r) for r in ids],
                        logp[:, :n].tolist() if logp is not None else [])

    def sample_text(self, settings: SampleSettings, prime: str = "") -> list[str]:
        """Whole samples as strings (prime not included)."""
        return [s.text for s in self.samples(settings, prime)]

    def stream(self, settings: SampleSettings, prime: str = "", stop: str | None = None,
               with_logprobs: bool = False) -> Iterator[Chunk]:
        """`generate`, each sample ending at the first `stop` that its characters complete.

        The stop text is kept. An occurrence may begin in the prime but must end in generated
        text. Generation ends once every sample has stopped, within one chunk of steps.
        Everything is checked when this is called, as `generate` does; a beam search runs
        when its one chunk (the best beams, known only at the end) is asked for.
        """
        settings.validate(self.vocab)
        stop = self.prepare_stop(stop) if stop is not None else None
        if settings.beam is not None:
            self.encode_prime(prime)
            return self._beam_chunk(settings, prime, stop, with_logprobs)
        chunks = self.generate(settings, prime, with_logprobs)
        if stop is None:
            return chunks
        return self._cut_at_stop(chunks, settings, prime, stop, with_logprobs)

    def _beam_chunk(self, settings: SampleSettings, prime: str, stop: str | None,
                    with_logprobs: bool) -> Iterator[Chunk]:
        found = beam_search(self, settings, prime, stop)
        yield Chunk([s.text for s in found], [s.logprobs for s in found]
                    if with_logprobs else [])

    def _cut_at_stop(self, chunks: Iterator[Chunk], settings: SampleSettings, prime: str,
                     stop: str, with_logprobs: bool) -> Iterator[Chunk]:
        watch = [StopWatch(stop, self.vocab.normalize(prime))
                 for _ in range(settings.num_samples)]
        for chunk in chunks:
            texts, logprobs = [], []
            for i, piece in enumerate(chunk.texts):
                cut = watch[i].cut(piece)
                texts.append(piece[:cut])
                logprobs.append(chunk.logprobs[i][:cut] if chunk.logprobs else [])
            yield Chunk(texts, logprobs if with_logprobs else [])
            if all(w.ended for w in watch):
                chunks.close()  # stops the model early
                return

    def samples(self, settings: SampleSettings, prime: str = "", stop: str | None = None,
                with_logprobs: bool = False) -> list[Sample]:
        """Whole samples with what produced them, each ended at `stop` when given."""
        if settings.beam is not None:
            settings.validate(self.vocab)
            return beam_search(self, settings, prime,
                               self.prepare_stop(stop) if stop is not None else None)
        chunks = self.stream(settings, prime, stop, with_logprobs)  # checks all, rows' memory too
        texts: list[list[str]] = [[] for _ in range(settings.num_samples)]
        logprobs: list[list[float]] = [[] for _ in range(settings.num_samples)]
        for chunk in chunks:
            for i, piece in enumerate(chunk.texts):
                texts[i].append(piece)
                if with_logprobs:
                    logprobs[i].extend(chunk.logprobs[i])
        return [Sample(settings.temperature, prime, "".join(t), lp)
                for t, lp in zip(texts, logprobs, strict=True)]


class StopWatch:
    """Finds where one sample's text first completes the stop text, across chunks."""

    def __init__(self, stop: str, prime: str):
        self.stop = stop
        self.keep = len(stop) - 1  # characters of a possible partial match carried over
        self.tail = prime[-self.keep:] if self.keep else ""
        self.ended = False

    def cut(self, piece: str) -> int:
        """How many characters of `piece` belong to the sample (all, until the stop ends it)."""
        if self.ended:
            return 0
        window = self.tail + piece
        found = window.find(self.stop)
        if found >= 0:
            self.ended = True
            return found + len(self.stop) - len(self.tail)
        if self.keep:
            self.tail = window[-self.keep:]
        return len(piece)


# ---- beam search ------------------------------------------------------------------------------
@torch.inference_mode()
def beam_search(sampler: Sampler, settings: SampleSettings, prime: str = "",
                stop: str | None = None, cancelled: Callable[[], bool] | None = None
                ) -> list[Sample]:
    """The `num_samples` most probable continuations of `prime` (by total log-probability
    under the model), found by keeping the `beam` best partial texts at every step.

    A text that completes `stop` is finished and kept; the search ends when no unfinished
    text can still be among the best finished ones (log-probabilities only fall), or after
    `length` steps. Ties go to the earlier candidate, so the result is deterministic.
    `cancelled` is asked before every step; once it says True the search raises Cancelled
    (a server's client left: up to 32 x 10,000 steps would otherwise run for nobody).
    """
    width, wanted = settings.beam, settings.num_samples
    stepper, device, vocab = sampler.stepper(), sampler.device, sampler.vocab
    logits, state = sampler.read_prime(sampler.start_ids(sampler.encode_prime(prime)))
    state = stepper.from_state(state)  # logits (1, V): a single beam to start from
    beams = [_Beam(0.0, [], [], StopWatch(stop, vocab.normalize(prime)) if stop else None)]
    finished: list[_Beam] = []
    for _ in range(settings.length):
        if cancelled is not None and cancelled():
            raise Cancelled("the beam search was cancelled")
        logits[:, UNK_ID] = -math.inf  # never <unk>: probabilities over the real characters
        logp = torch.log_softmax(logits, dim=-1)  # (beams, V)
        scores = torch.tensor([b.score for b in beams], dtype=torch.float64, device=device)
        total = (scores[:, None] + logp.double()).flatten()  # (beams * V,)
        order = torch.sort(total, descending=True, stable=True).indices[:width]
        order = order[torch.isfinite(total[order])]  # fewer candidates than beams at first
        parents, chars = order // logp.shape[1], order % logp.shape[1]
        beams = [beams[p].extended(c, float(t), float(lp), vocab.itos[c])
                 for p, c, t, lp in zip(parents.tolist(), chars.tolist(), total[order].tolist(),
                                        logp[parents, chars].tolist(), strict=True)]
        finished = sorted(finished + [b for b in beams if b.ended], key=_Beam.rank)
        alive = [i for i, b in enumerate(beams) if not b.ended]
        beams = [beams[i] for i in alive]
        # Once the wanted-th best finished text beats the best unfinished one, stop.
        if not beams or (len(finished) >= wanted and finished[wanted - 1].score >= beams[0].score):
            break
        keep = torch.tensor(alive, dtype=torch.long, device=device)
        state = map_state(lambda s, rows=parents[keep]: s[:, rows], state)  # beams on dimension 1
        logits, state = stepper(chars[keep], state)
    best = sorted(finished + beams, key=_Beam.rank)[:wanted]
    return [Sample(settings.temperature, prime, vocab.decode(b.ids), b.logprobs) for b in best]


@dataclass
class _Beam:
    """One partial text of a beam search: its total log-probability and characters."""

    score: float
    ids: list[int]
    logprobs: list[float]
    watch: StopWatch | None  # finds the stop text, if one was given

    @property
    def ended(self) -> bool:
        return self.watch is not None and self.watch.ended

    def rank(self) -> float:
        return -self.score

    def extended(self, char: int, score: float, logprob: float, text: str) -> _Beam:
        watch = None
        if self.watch is not None:
            watch = _copied(self.watch)
            watch.cut(text)
        return _Beam(score, [*self.ids, char], [*self.logprobs, logprob], watch)


def _copied(watch: StopWatch) -> StopWatch:
    twin = StopWatch.__new__(StopWatch)
    twin.__dict__.update(watch.__dict__)
    return twin


# ---- parsing what users type ------------------------------------------------------------------
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


def read_prime_file(path: str | Path) -> str:
    """A prime written in a file (UTF-8, any number of lines, a leading BOM left out), for
    --prime-file."""
    if not str(path).strip():  # Path("") is ".", which was "it is a directory"
        raise UsageError("--prime-file was given an empty name; name a UTF-8 text file")
    path = Path(path).expanduser()
    kind = fileio.file_kind(path)
    if kind != "file":
        what = "no such file" if kind == "missing" else fileio.what_it_is(kind)
        raise UsageError(f"--prime-file {path}: {what}; give a UTF-8 text file")
    try:
        if path.stat().st_size > MAX_PRIME_BYTES:
            raise UsageError(f"--prime-file {path} is larger than {MAX_PRIME_BYTES:,} bytes; "
                             "a prime is the start of a text: use its last part")
        # Its bytes as they are, CRLF kept: whether a model reads them as such (trained on
        # CRLF text) or as LF is the caller's to decide (`charrnn sample` knows the model).
        # A BOM (as Notepad saves) is no part of the text: it was echoed before the sample.
        return path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--prime-file {path} is not UTF-8 text (byte {exc.start}); "
                         "convert it to UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read --prime-file {path}: {exc.strerror or exc}") from None


def samples_json(samples: list[Sample], one_line: bool = False) -> str:
    """A JSON list of samples: one object per line, or all on one line (one reply per prompt)."""
    objects = [json.dumps(s.to_dict(), ensure_ascii=False) for s in samples]
    if one_line:
        return "[" + ", ".join(objects) + "]\n"
    return "[\n" + ",\n".join(objects) + "\n]\n"
