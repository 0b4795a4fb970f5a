"""The tones world: procedural 1-second audio clips (8 kHz) with known, independent factors.

Factors (each uniform and independent of the others):

- ``timbre``: sine, square, sawtooth (band-limited additive synthesis: partials below 2.15 kHz;
  square = odd harmonics at 1/h, sawtooth = all harmonics at 1/h)
- ``tempo``:  slow (4 notes/s) or fast (8 notes/s)
- ``mood``:   major or minor arpeggio, cycling root, third, fifth, third (the third is 4 or 3
  semitones above the root)
- ``vocals``: absent or present: a voiced buzz (120-160 Hz fundamental with vibrato) heard
  through formant resonances in the 2.6-3.8 kHz band, above every note partial, with a slow
  syllable-like amplitude envelope
- nuisance: the root note (C3, F3 or A#3), oscillator phases, the voice's fundamental, vibrato
  and syllable rate/phase. Every clip starts on its root at t = 0.

Notes start on a grid of 16 frames per second (500 samples), so that the model's representation
(:func:`represent`) describes a clip exactly; onsets sit at multiples of the note length.

Why so few roots and a fixed onset grid: with 12 equally likely roots (or uniformly random onset
times) every bin (frame) is equally likely to hold the third (an onset) whatever the mood (tempo),
so these relational factors give the denoiser no signal until it has pinned the root (the
phase) -- a first run with 12 roots and random onsets ignored mood and tempo words entirely
after 1,000 steps (flipping the mood word changed the x0 error by < 0.1%). With roots C, D, F, G
the model mixed chords that share notes (D minor / F major); the three roots a fourth apart
share no chord-tone bin. Likewise a random rotation of the arpeggio (which note comes first)
left the tempo words unused (flipping them changed the x0 error by < 1%).

**Representation** (what the model generates): a semitone spectrogram, ``B x N_BINS x N_FRAMES``
= ``B x 53 x 16`` (frames of 62.5 ms) in ``[-1, 1]``, used directly as the DiT's ``B C T`` input
(53 channels per token). Bins 0-48 are semitones (MIDI 48-96, 131 Hz-2.09 kHz) holding, per frame,
the amplitude of the partial that falls in the bin (harmonic ``h`` of a note at MIDI ``p`` goes to
bin ``p + round(12 log2 h) - 48``); bins 49-52 are four 300 Hz-wide vocal formant bands centred at
2.75/3.05/3.35/3.65 kHz. Values are ``2 sqrt(amplitude) - 1`` (silence = -1). A major and a minor
third are a whole bin apart, and timbre is a fixed pattern of bins above the fundamental (+12
present for sawtooth only, +19 for square and sawtooth). :func:`patchify` can group ``PATCH``
frames per token (``PATCH = 1`` here: 2 frames x 53 bins per token was tried and learned slower).
:func:`synthesize` turns a representation back into audio: one sinusoid per semitone bin at its
centre frequency, random phases, frame-wise amplitudes smoothed over 4 ms; each vocal channel
drives the partials of a voiced buzz that fall in its band.

:func:`probes` judges every factor from the waveform alone (STFT based, rule based): the
fundamental track (strongest peak 120-420 Hz) gives mood (root = lowest frequent pitch, third 3
or 4 semitones above it), tempo (number of notes: runs of a steady pitch), timbre (2nd and 3rd harmonic levels
relative to the fundamental), vocals (energy share of the 2.45-3.95 kHz band).

Prompts are short word sequences with two synonyms per concept and three templates, e.g.
``"a fast sawtooth melody in a minor key with vocals"``, ``"sad buzzy tune leisurely
instrumental"``. :func:`build_tokenizer` makes a word-level tokenizer offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .text import word_level_tokenizer

__all__ = [
    "SR",
    "N_SAMPLES",
    "HOP",
    "N_FRAMES",
    "N_NOTE_BINS",
    "N_VOCAL_BINS",
    "N_BINS",
    "PATCH",
    "N_TOKENS",
    "N_CHANNELS",
    "patchify",
    "unpatchify",
    "MIDI_LO",
    "TIMBRES",
    "TEMPOS",
    "MOODS",
    "VOCALS",
    "FACTORS",
    "SYNONYMS",
    "TEMPLATES",
    "MAX_LENGTH",
    "TonesBatch",
    "sample_factors",
    "represent",
    "render",
    "synthesize",
    "sample",
    "probes",
    "make_prompt",
    "make_prompts",
    "parse_prompt",
    "vocabulary",
    "build_tokenizer",
]

SR = 8000
N_SAMPLES = 8000  # 1 s
HOP = 500  # samples per frame (62.5 ms)
N_FRAMES = N_SAMPLES // HOP  # 16
PATCH = 1  # frames per token (2 was tried: more channels per token learned slower)
N_TOKENS = N_FRAMES // PATCH  # 16
MIDI_LO = 48  # lowest root and lowest bin (C3, 130.8 Hz)
ROOTS = (0, 5, 10)  # semitones above MIDI_LO: C3, F3, A#3 (their chord tones never share a bin)
N_NOTE_BINS = 49  # MIDI 48..96
N_VOCAL_BINS = 4
N_BINS = N_NOTE_BINS + N_VOCAL_BINS  # 53 per frame
N_CHANNELS = PATCH * N_BINS  # 53 per token
F_MAX = 2150.0  # band limit of the note partials
VOCAL_CENTRES = (2750.0, 3050.0, 3350.0, 3650.0)
VOCAL_HALF_WIDTH = 150.0
_VOCAL_FORMANT = (0.55, 0.8, 0.5, 0.7)  # per-band amplitude of the voice (resonances ~3.0, 3.6 kHz)
_TAU = 0.25  # note decay time constant, seconds
_RAMP = 0.004  # seconds of attack / release at note boundaries
_VOICE_GAIN = 1.0

TIMBRES = ("sine", "square", "sawtooth")
TEMPOS = ("slow", "fast")
MOODS = ("major", "minor")
VOCALS = ("instrumental", "vocals")
FACTORS: dict[str, tuple[str, ...]] = {"timbre": TIMBRES, "tempo": TEMPOS, "mood": MOODS, "vocals": VOCALS}
FRAMES_PER_NOTE = (4, 2)  # slow, fast
THIRD = (4, 3)  # major, minor
PATTERN = (0, 1, 2, 1)  # root, third, fifth, third

SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "timbre": {
        "sine": ("sine", "pure"),
        "square": ("square", "hollow"),
        "sawtooth": ("sawtooth", "buzzy"),
    },
    "tempo": {"slow": ("slow", "leisurely"), "fast": ("fast", "quick")},
    "mood": {"major": ("major", "happy"), "minor": ("minor", "sad")},
    "vocals": {
        "instrumental": ("without vocals", "instrumental"),
        "vocals": ("with vocals", "with singing"),
    },
}
TEMPLATES = (
    "a {tempo} {timbre} melody in a {mood} key {vocals}",
    "{mood} {timbre} tune {tempo} {vocals}",
    "a {tempo} {mood} {timbre} arpeggio {vocals}",
)
MAX_LENGTH = 12  # <bos> + at most 9 words + <eos>, padded
# <eos> is not id 2: CLIPTextModel's pooled output would otherwise take the legacy
# "argmax of the ids" position instead of the <eos> position
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")


@dataclass
class TonesBatch:
    """A batch of world samples: representations, (optionally) waveforms and factors."""

    reps: torch.Tensor  # B x N_CHANNELS x N_TOKENS in [-1, 1]
    audio: torch.Tensor | None  # B x N_SAMPLES (ground-truth rendering) or None
    factors: dict[str, torch.Tensor]
    prompts: list[str]

    def labels(self) -> dict[str, torch.Tensor]:
        return {k: self.factors[k] for k in FACTORS}


def sample_factors(n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Independent uniform draws of every factor, nuisances included."""
    g = generator
    f = {k: torch.randint(len(v), (n,), generator=g) for k, v in FACTORS.items()}
    f["root"] = torch.tensor(ROOTS)[torch.randint(len(ROOTS), (n,), generator=g)]
    # the arpeggio starts on the root at frame 0 (a random rotation of the cycle was tried: it
    # makes every frame's marginal the same for both tempos, and the tempo words went unused)
    f["offset"] = torch.zeros(n, dtype=torch.long)
    f["voice_f0"] = 120.0 + 40.0 * torch.rand(n, generator=g)
    f["syllable_rate"] = 2.0 + 1.5 * torch.rand(n, generator=g)
    f["syllable_phase"] = 2 * math.pi * torch.rand(n, generator=g)
    f["seed"] = torch.randint(2**31 - 1, (n,), generator=g)  # phases, vibrato
    return f


def _note_track(f: dict[str, torch.Tensor], times: torch.Tensor):
    """Pitch (MIDI) and position in the note (seconds) at ``times`` (seconds, 1-D) -> B x len."""
    fpn = torch.tensor(FRAMES_PER_NOTE)[f["tempo"]].float()[:, None]  # B x 1
    pos = times[None, :] * (SR / HOP) + f["offset"].float()[:, None]  # in frames
    k = torch.floor(pos / fpn).long()  # note index
    in_note = (pos - k * fpn) * (HOP / SR)  # seconds since the note's onset
    step = torch.tensor(PATTERN)[k % 4]  # 0 root, 1 third, 2 fifth
    third = torch.tensor(THIRD)[f["mood"]][:, None]
    semis = torch.where(step == 0, 0, torch.where(step == 1, third, 7))
    pitch = MIDI_LO + f["root"][:, None] + semis
    note_len = fpn * (HOP / SR)
    return pitch, in_note, note_len


def _harmonic_gains(timbre: torch.Tensor, n_h: int = 16) -> torch.Tensor:
    """B x n_h amplitude of harmonic h = 1..n_h (before the band limit)."""
    h = torch.arange(1, n_h + 1).float()
    sine = (h == 1).float()
    square = (h % 2 == 1).float() / h
    saw = 1.0 / h
    return torch.stack([sine, square, saw])[timbre]


def _syllables(f, times):
    return 0.45 + 0.55 * (
        0.5 - 0.5 * torch.cos(2 * math.pi * f["syllable_rate"][:, None] * times[None, :] + f["syllable_phase"][:, None])
    )


def patchify(spec: torch.Tensor) -> torch.Tensor:
    """Semitone spectrogram B x 53 x 16 frames -> model tokens B x (53 PATCH) x (16 / PATCH)
    (channel = k * 53 + bin for the k-th frame of a token); the identity for ``PATCH = 1``."""
    B, C, T = spec.shape
    return spec.reshape(B, C, T // PATCH, PATCH).permute(0, 3, 1, 2).reshape(B, PATCH * C, T // PATCH)


def unpatchify(reps: torch.Tensor) -> torch.Tensor:
    """Model tokens -> semitone spectrogram B x 53 x 16 (inverse of :func:`patchify`)."""
    B, C2, T = reps.shape
    return reps.reshape(B, PATCH, C2 // PATCH, T).permute(0, 2, 3, 1).reshape(B, C2 // PATCH, T * PATCH)


def represent(f: dict[str, torch.Tensor], tokens: bool = True) -> torch.Tensor:
    """The exact representation of the clips described by factors ``f``: model tokens
    B x 53 x 16 (or, with ``tokens=False``, the semitone spectrogram, the same for PATCH = 1)."""
    B = len(f["timbre"])
    sub = 10  # average the envelopes over 10 points per frame
    times = (torch.arange(N_FRAMES * sub).float() + 0.5) * (HOP / SR) / sub
    pitch, in_note, _ = _note_track(f, times)
    env = torch.exp(-in_note / _TAU)  # B x T*sub
    gains = _harmonic_gains(f["timbre"])  # B x 16
    h = torch.arange(1, 17).float()
    offs = torch.round(12 * torch.log2(h)).long()  # semitone offsets of harmonics
    amp = torch.zeros(B, N_NOTE_BINS, N_FRAMES * sub)
    for i in range(16):
        freq = 440.0 * 2 ** ((pitch + offs[i] - 69) / 12)
        ok = (440.0 * 2 ** ((pitch - 69) / 12) * h[i]) < F_MAX
        b = (pitch + offs[i] - MIDI_LO).clamp(0, N_NOTE_BINS - 1)
        val = env * gains[:, i : i + 1] * ok * (freq > 0)
        amp.scatter_add_(1, b[:, None, :], val[:, None, :])
    amp = amp.view(B, N_NOTE_BINS, N_FRAMES, sub).mean(-1)
    voc = _syllables(f, times).view(B, N_FRAMES, sub).mean(-1)  # B x T
    vamp = torch.tensor(_VOCAL_FORMANT)[None, :, None] * voc[:, None, :] * f["vocals"].float()[:, None, None]
    a = torch.cat([amp, vamp], 1).clamp(0, 1)
    spec = 2 * a.sqrt() - 1
    return patchify(spec) if tokens else spec


def _smooth_upsample(x: torch.Tensor, ms: float = 4.0) -> torch.Tensor:
    """B x C x T frame values -> B x C x N_SAMPLES, piecewise constant then moving average."""
    y = x.repeat_interleave(HOP, dim=-1)
    k = max(1, int(SR * ms / 1000))
    B, C, N = y.shape
    y = torch.nn.functional.avg_pool1d(y.reshape(B * C, 1, N), k, stride=1, padding=k // 2, count_include_pad=False)[
        ..., :N
    ]
    return y.reshape(B, C, N)


def _voice(f0: torch.Tensor, seed: torch.Tensor, band_amp: torch.Tensor) -> torch.Tensor:
    """Voiced buzz: partials of a 120-160 Hz source with vibrato, each scaled by the amplitude
    envelope of the formant band it falls in. ``band_amp``: B x 4 x N_SAMPLES -> B x N_SAMPLES."""
    B = f0.shape[0]
    t = torch.arange(N_SAMPLES).float() / SR
    gens = [torch.Generator().manual_seed(int(s) + 1) for s in seed.tolist()]
    vib_rate = torch.stack([4.5 + 2 * torch.rand((), generator=g) for g in gens])
    vib_phase = torch.stack([2 * math.pi * torch.rand((), generator=g) for g in gens])
    inst = f0[:, None] * (1 + 0.03 * torch.sin(2 * math.pi * vib_rate[:, None] * t + vib_phase[:, None]))
    phase = 2 * math.pi * torch.cumsum(inst, -1) / SR  # B x N
    out = torch.zeros(B, N_SAMPLES)
    k_lo = int((VOCAL_CENTRES[0] - VOCAL_HALF_WIDTH) / 160.0)
    k_hi = int((VOCAL_CENTRES[-1] + VOCAL_HALF_WIDTH) / 120.0) + 1
    ph0 = torch.stack([2 * math.pi * torch.rand(k_hi + 1, generator=g) for g in gens])
    for k in range(k_lo, k_hi + 1):
        fk = inst * k  # B x N
        gain = torch.zeros_like(fk)
        for c, fc in enumerate(VOCAL_CENTRES):
            w = ((fk - fc).abs() <= VOCAL_HALF_WIDTH).float()
            gain = gain + w * band_amp[:, c]
        out = out + gain * torch.sin(k * phase + ph0[:, k : k + 1]) * 0.5
    return out * _VOICE_GAIN


def synthesize(
    reps: torch.Tensor, generator: torch.Generator | None = None, voice_f0: torch.Tensor | None = None
) -> torch.Tensor:
    """Representation (tokens or spectrogram B x 53 x 16, values in [-1, 1]) ->
    audio B x N_SAMPLES (additive). Phases and the voice's fundamental are drawn from
    ``generator`` (nuisances)."""
    reps = reps.detach().float().cpu()
    if reps.shape[1] == N_CHANNELS and PATCH > 1:
        reps = unpatchify(reps)
    B = reps.shape[0]
    a = ((reps + 1) / 2).clamp(0, 1.5) ** 2
    env = _smooth_upsample(a)  # B x 53 x N
    t = torch.arange(N_SAMPLES).float() / SR
    freqs = 440.0 * 2 ** ((torch.arange(N_NOTE_BINS) + MIDI_LO - 69) / 12)  # 49
    ph = 2 * math.pi * torch.rand(B, N_NOTE_BINS, 1, generator=generator)
    notes = (env[:, :N_NOTE_BINS] * torch.sin(2 * math.pi * freqs[None, :, None] * t + ph)).sum(1)
    if voice_f0 is None:
        voice_f0 = 120.0 + 40.0 * torch.rand(B, generator=generator)
    seed = torch.randint(2**31 - 1, (B,), generator=generator)
    voice = _voice(voice_f0, seed, env[:, N_NOTE_BINS:])
    return (notes + voice) * 0.25


def render(f: dict[str, torch.Tensor]) -> torch.Tensor:
    """Ground-truth waveform of factors ``f`` with exact harmonic frequencies: B x N_SAMPLES."""
    B = len(f["timbre"])
    t = torch.arange(N_SAMPLES).float() / SR
    pitch, in_note, note_len = _note_track(f, t)
    env = torch.exp(-in_note / _TAU)
    ramp = (in_note / _RAMP).clamp(max=1) * ((note_len - in_note) / _RAMP).clamp(0, 1)
    env = env * ramp
    f0 = 440.0 * 2 ** ((pitch.float() - 69) / 12)  # B x N
    phase = 2 * math.pi * torch.cumsum(f0, -1) / SR
    gains = _harmonic_gains(f["timbre"])
    gens = [torch.Generator().manual_seed(int(s)) for s in f["seed"].tolist()]
    ph0 = torch.stack([2 * math.pi * torch.rand(16, generator=g) for g in gens])  # B x 16
    notes = torch.zeros(B, N_SAMPLES)
    for i in range(16):
        h = i + 1
        ok = (f0 * h < F_MAX).float()
        notes = notes + gains[:, i : i + 1] * ok * torch.sin(h * phase + ph0[:, i : i + 1])
    notes = notes * env
    syl = _syllables(f, t)  # B x N
    band = (torch.tensor(_VOCAL_FORMANT)[None, :, None] * syl[:, None, :]) * f["vocals"].float()[:, None, None]
    voice = _voice(f["voice_f0"], f["seed"], band)
    return (notes + voice) * 0.25


def make_prompt(factors: dict[str, int], template: int = 0, synonyms=(0, 0, 0, 0)) -> str:
    """Words for one factor combination; ``synonyms`` picks (timbre, tempo, mood, vocals) words."""
    words = {k: SYNONYMS[k][FACTORS[k][int(factors[k])]][synonyms[i]] for i, k in enumerate(FACTORS)}
    return TEMPLATES[template].format(**words)


def make_prompts(
    f: dict[str, torch.Tensor], generator: torch.Generator | None = None, paraphrase: bool = True
) -> list[str]:
    """Prompts for factor tensors. With ``paraphrase`` the template and synonyms are random."""
    n = len(f["timbre"])
    if paraphrase:
        tmpl = torch.randint(len(TEMPLATES), (n,), generator=generator).tolist()
        syn = torch.randint(2, (n, 4), generator=generator).tolist()
    else:
        tmpl, syn = [0] * n, [(0, 0, 0, 0)] * n
    return [make_prompt({k: f[k][i] for k in FACTORS}, tmpl[i], syn[i]) for i in range(n)]


def sample(
    n: int, generator: torch.Generator | None = None, paraphrase: bool = True, audio: bool = False
) -> TonesBatch:
    """Draw ``n`` clips (representation; waveform too with ``audio``), their factors and prompts,
    deterministically for ``generator``."""
    f = sample_factors(n, generator)
    prompts = make_prompts(f, generator, paraphrase)
    return TonesBatch(reps=represent(f), audio=render(f) if audio else None, factors=f, prompts=prompts)


# ---------------------------------------------------------------------------------------------
# probes


def _stft(audio: torch.Tensor):
    win = 512
    n_fft = 4096
    spec = torch.stft(
        audio.float(),
        n_fft=n_fft,
        hop_length=125,
        win_length=win,
        window=torch.hann_window(win),
        center=True,
        return_complex=True,
    ).abs()
    freqs = torch.arange(n_fft // 2 + 1).float() * SR / n_fft
    return spec, freqs  # B x F x frames


def _peak_near(spec, freqs, target, rel=0.03):
    """Max magnitude within +-rel of ``target`` (B x T Hz) -> B x T."""
    lo = (target * (1 - rel))[:, None, :]
    hi = (target * (1 + rel))[:, None, :]
    m = (freqs[None, :, None] >= lo) & (freqs[None, :, None] <= hi)
    return (spec * m).amax(1)


@torch.no_grad()
def probes(audio: torch.Tensor, details: bool = False) -> dict[str, torch.Tensor]:
    """Judge every factor from waveforms ``audio`` (B x N_SAMPLES at 8 kHz).

    Returns factor indices (long tensors of length B) for ``timbre``, ``tempo``, ``mood`` and
    ``vocals``; with ``details`` also the underlying measurements (``root`` = estimated lowest
    note in MIDI, ``h2``, ``h3``, ``changes``, ``vocal_db``)."""
    if audio.dim() == 1:
        audio = audio[None]
    audio = audio.detach().float().cpu()
    spec, freqs = _stft(audio)
    B, F, T = spec.shape
    power = (spec**2).sum(1)  # B x T
    voiced = power > 0.05 * power.amax(1, keepdim=True).clamp_min(1e-12)
    # fundamental: strongest peak in 120..420 Hz, parabolic interpolation
    band = (freqs >= 120) & (freqs <= 420)
    idx0 = int(band.nonzero()[0])
    sub = spec[:, band]
    k = sub.argmax(1)  # B x T
    kk = (k + idx0).clamp(1, F - 2)
    a, b, c = (spec.gather(1, (kk + d)[:, None]).squeeze(1) for d in (-1, 0, 1))
    delta = 0.5 * (a - c) / (a - 2 * b + c).clamp(max=-1e-9)
    f0 = (kk.float() + delta.clamp(-0.5, 0.5)) * SR / 4096
    midi = 69 + 12 * torch.log2(f0.clamp_min(1.0) / 440.0)
    # timbre: harmonic levels relative to the fundamental
    m1 = b.clamp_min(1e-9)
    h2 = _peak_near(spec, freqs, 2 * f0) / m1
    h3 = _peak_near(spec, freqs, 3 * f0) / m1
    nan = torch.tensor(float("nan"))
    h2m = torch.where(voiced, h2, nan).nanmedian(1).values.nan_to_num(0.0)
    h3m = torch.where(voiced, h3, nan).nanmedian(1).values.nan_to_num(0.0)
    timbre = torch.where(h3m < 0.15, torch.where(h2m < 0.2, 0, 2), torch.where(h2m < 0.25, 1, 2))
    # mood: histogram of rounded pitches over voiced frames
    p = midi.round().long().clamp(0, 127)
    hist = torch.zeros(B, 128)
    hist.scatter_add_(1, p, voiced.float())
    frac = hist / hist.sum(1, keepdim=True).clamp_min(1)
    frequent = frac >= 0.1
    ar = torch.arange(128)[None].expand(B, -1)
    root = torch.where(frequent, ar, 1000).amin(1).clamp(max=120)
    n3 = hist.gather(1, (root + 3)[:, None]).squeeze(1)
    n4 = hist.gather(1, (root + 4)[:, None]).squeeze(1)
    mood = (n3 > n4).long()
    # tempo: number of note changes in the (median-filtered) pitch track over voiced frames
    pm = torch.nn.functional.pad(midi[:, None], (2, 2), mode="replicate")[:, 0]
    pm = pm.unfold(1, 5, 1).median(-1).values.round()
    pm = torch.where(voiced, pm, -1.0)
    # runs of a constant voiced pitch lasting >= 3 frames (24 ms hops): one per note
    changes = torch.zeros(B, dtype=torch.long)
    for i in range(B):
        vals, counts = torch.unique_consecutive(pm[i], return_counts=True)
        changes[i] = int(((counts >= 3) & (vals >= 0)).sum())
    tempo = (changes >= 7).long()
    # vocals: share of energy in the formant band
    vb = (freqs >= 2450) & (freqs <= 3950)
    e_v = (spec[:, vb] ** 2).sum((1, 2))
    e_all = (spec**2).sum((1, 2)).clamp_min(1e-12)
    vocal_db = 10 * torch.log10(e_v / e_all + 1e-12)
    vocals = (vocal_db > -20).long()
    out = {"timbre": timbre.long(), "tempo": tempo.long(), "mood": mood, "vocals": vocals}
    if details:
        out.update(root=root, h2=h2m, h3=h3m, changes=changes, vocal_db=vocal_db)
    return out


# ---------------------------------------------------------------------------------------------
# prompts and tokenizer

_PHRASES = sorted(
    (
        (tuple(words.split()), factor, FACTORS[factor].index(value))
        for factor, table in SYNONYMS.items()
        for value, ws in table.items()
        for words in ws
    ),
    key=lambda x: -len(x[0]),
)


def parse_prompt(prompt: str) -> dict[str, int | None]:
    """Ground-truth factor indices named in a prompt (None for a factor it does not name)."""
    out: dict[str, int | None] = {f: None for f in FACTORS}
    words = prompt.lower().split()
    used = [False] * len(words)
    for phrase, factor, idx in _PHRASES:  # longest phrases first
        n = len(phrase)
        for i in range(len(words) - n + 1):
            if tuple(words[i : i + n]) == phrase and not any(used[i : i + n]):
                out[factor] = idx
                used[i : i + n] = [True] * n
    return out


def vocabulary() -> dict[str, int]:
    """Token ids: the special tokens, then the template words, then every concept word."""
    words = list(SPECIAL_TOKENS)
    for t in TEMPLATES:
        for w in t.split():
            if not w.startswith("{") and w not in words:
                words.append(w)
    for table in SYNONYMS.values():
        for ws in table.values():
            for phrase in ws:
                words.extend(w for w in phrase.split() if w not in words)
    return {w: i for i, w in enumerate(words)}


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` built offline (no download): ``<bos> $A <eos>``,
    padded with ``<pad>`` to ``MAX_LENGTH``; unknown words map to ``<unk>``."""
    return word_level_tokenizer(vocabulary(), MAX_LENGTH)
