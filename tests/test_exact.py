"""Exact integer priors: close to the float model, stepper == full evaluation, the same tables everywhere."""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import math
import random
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch

from vqcodec.coding import entropy, order
from vqcodec.exact import arithmetic, fused, quantise
from vqcodec.exact import stepper as exact_stepper
from vqcodec.exact.arithmetic import ACT_MAX, FA, FE, Q_MAX, T_MAX, TABLE_SIZE, frequencies
from vqcodec.exact.calibrate import prior_ranges
from vqcodec.exact.cuda_stepper import ColumnStepper
from vqcodec.exact.encoder import KnownCodes, encoder_stepper, logits_full, tables_full
from vqcodec.exact.prior import ExactPrior
from vqcodec.exact.quantise import input_quantiser, masked_offsets
from vqcodec.models.config import ModelConfig, PriorConfig, three_level_config, tiny_config
from vqcodec.models.pixelsnail import PixelSNAILPrior
from vqcodec.models.sampling import sample_codes

TOTAL = 2**entropy.PRECISION


def small(config: PriorConfig) -> PriorConfig:
    return dataclasses.replace(config, channels=8, cond_channels=8, n_blocks=2, n_cond_blocks=1)


def make_priors() -> dict[str, PixelSNAILPrior]:
    """One float prior of every kind, small, float64, eval mode."""
    torch.manual_seed(0)
    tiny, three = tiny_config(), three_level_config()
    top_k5 = PriorConfig(
        channels=8, n_blocks=2, attention_every=1, n_heads=2, attention_radius=3, kernel_size=5
    )
    priors = {
        "top": PixelSNAILPrior(dataclasses.replace(tiny.priors[0], attention_every=1), 32),
        "top_k5": PixelSNAILPrior(top_k5, 16),
        "bottom": PixelSNAILPrior(tiny.priors[1], 32, (32,)),
        "three_middle": PixelSNAILPrior(small(three.priors[1]), 16, (12,)),
        "three_bottom": PixelSNAILPrior(small(three.priors[2]), 16, (12, 10)),
    }
    return {name: prior.double().eval() for name, prior in priors.items()}


def calibrated_ranges(prior: PixelSNAILPrior) -> dict[str, int]:
    """``prior``'s input ranges measured on random codes (``exact.calibrate``)."""
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(prior.codebook_size, (4, 8, 10), generator=g)
    above = [
        torch.stack([random_cond(prior, 8, 10, seed)[level] for seed in range(4)])
        for level in range(len(prior.cond_codebook_sizes))
    ]
    return prior_ranges(prior, [(codes, above)])


def calibrated(prior: PixelSNAILPrior) -> ExactPrior:
    return ExactPrior.from_float(prior, calibrated_ranges(prior))


PRIORS = make_priors()


def random_cond(prior: PixelSNAILPrior, h: int, w: int, seed: int = 0) -> list[torch.Tensor]:
    """Random [h_i, w_i] codes for every level above ``prior``'s (top first) for an h x w map."""
    g = torch.Generator().manual_seed(seed)
    n = len(prior.cond_codebook_sizes)
    return [
        torch.randint(k, (-(-h // 2 ** (n - i)), -(-w // 2 ** (n - i))), generator=g)
        for i, k in enumerate(prior.cond_codebook_sizes)
    ]


EXACT_RANGES = {name: calibrated_ranges(prior) for name, prior in PRIORS.items()}
EXACT = {name: ExactPrior.from_float(prior, EXACT_RANGES[name]) for name, prior in PRIORS.items()}


def stepper_tables(prior: ExactPrior, codes: torch.Tensor, cond: list[torch.Tensor]) -> list[np.ndarray]:
    """The stepper's tables of every step, fed the known codes as an encoder does."""
    stepper = prior.stepper(*codes.shape, cond)
    tables = []
    for t in range(stepper.n_steps):
        ys, xs = stepper.positions(t)
        tables.append(stepper.freqs(t))
        stepper.set_codes(t, codes[ys, xs])
    return tables


def reference_frequencies(logits: list[int]) -> list[int]:
    """The frequency rule of exact.md in plain Python integers."""
    table = arithmetic.tables().exp
    top = max(logits)
    e = [int(table[min(top - v, TABLE_SIZE - 1)]) for v in logits]
    total = sum(e)
    f = [1 + v * (TOTAL - len(logits)) // total for v in e]
    f[logits.index(top)] += TOTAL - sum(f)
    return f


def exact_round(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


def test_tables_are_reproducible_and_match_their_definition() -> None:
    first = arithmetic.tables()
    arithmetic.tables.cache_clear()
    again = arithmetic.tables()
    assert first is not again
    for a, b in zip(first, again, strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b)
    elu, sigmoid, exp = again
    assert len(elu) == len(exp) == TABLE_SIZE and len(sigmoid) == 2 * TABLE_SIZE
    # Spot values, each from its own 50-digit exp (the module uses powers of exp(-1/2^FA)).
    rng = random.Random(0)
    edges = [0, 1, 2, 1023, 1024, 7807, 7808, 14906, 14907, TABLE_SIZE - 1]
    spots = edges + rng.sample(range(TABLE_SIZE), 40)
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        for i in spots:
            e = (Decimal(-i) / 2**FA).exp()
            assert elu[i] == exact_round(2**FA * (e - 1)), i
            assert exp[i] == exact_round(2**FE * e), i
            for j in (i, 2 * TABLE_SIZE - 1 - i):
                x = Decimal(j - TABLE_SIZE) / 2**FA
                assert sigmoid[j] == exact_round(2**FA / (1 + (-x).exp())), j
    assert elu[0] == 0 and elu[-1] == -(2**FA) and exp[0] == 2**FE and exp[-1] == 0
    assert sigmoid[0] == 0 and sigmoid[TABLE_SIZE] == 2 ** (FA - 1) and sigmoid[-1] == 2**FA
    assert (np.diff(elu) <= 0).all() and (np.diff(exp) <= 0).all() and (np.diff(sigmoid) >= 0).all()
    assert (elu >= -np.arange(TABLE_SIZE)).all()  # what the integer ELU relies on
    # the check values of exact.md §4: sums, and SHA-256 of the int64 little-endian entries
    sums = [int(table.sum()) for table in again]
    digests = [hashlib.sha256(table.astype("<i8").tobytes()).hexdigest()[:16] for table in again]
    assert sums == [-15728489, 16776704, 1074265830]
    assert digests == ["7ad2b4b16b395c26", "81fb96b8ff6fd3df", "4ea90c4ed4e8e732"]


def test_activation_tables_follow_the_definitions() -> None:
    """The lookups of every clamped activation give exact.md §5's ELU and sigmoid."""
    elu, sigmoid, _ = (torch.from_numpy(table.copy()) for table in arithmetic.tables())
    x = torch.arange(-arithmetic.ACT_MAX, arithmetic.ACT_MAX + 1)
    elu_full, sigmoid_full = arithmetic.activation_tables(torch.device("cpu"))
    expected_elu = torch.where(x >= 0, x, elu[x.neg().clamp(0, TABLE_SIZE - 1)])
    expected_sigmoid = sigmoid[x.clamp(-TABLE_SIZE, TABLE_SIZE - 1) + TABLE_SIZE]
    assert torch.equal(elu_full, expected_elu.double())
    assert torch.equal(sigmoid_full, expected_sigmoid.double() * 2.0**-FA)


@pytest.mark.parametrize("k", [2, 4, 5, 512, 4096])
def test_frequency_rule(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    logits = torch.cat(
        [
            torch.randint(-8 * 2**FA, 8 * 2**FA, (20, k), generator=g),
            torch.randint(-(2**40), 2**40, (4, k), generator=g),
            torch.zeros(1, k, dtype=torch.int64),  # all equal
            torch.zeros(1, k, dtype=torch.int64).index_fill_(1, torch.tensor([k - 1]), 2**40),  # one huge
            torch.full((1, k), 7).index_fill_(1, torch.tensor([0, k - 1]), 9),  # a tie for the maximum
        ]
    )
    f = frequencies(logits)
    assert f.dtype == torch.int64 and f.shape == logits.shape
    assert (f >= 1).all() and (f.sum(dim=1) == TOTAL).all()
    for row, table in zip(logits.tolist(), f.tolist(), strict=True):
        assert table == reference_frequencies(row)
    if k & (k - 1) == 0:
        assert (f[-3] == TOTAL // k).all()
    assert f[-2, -1] == TOTAL - k + 1 and (f[-2, :-1] == 1).all()
    assert 0 <= f[-1, 0] - f[-1, -1] < k  # the first maximum takes the remainder


def test_floor_division_is_exact_up_to_its_bound() -> None:
    """Quotients just below, at and just above integers, with a + b up to 2**53."""
    generator = torch.Generator().manual_seed(0)
    for b_max in (2**20, 2**36, 2**52):
        b = torch.randint(1, b_max, (20000,), generator=generator)
        n = torch.randint(0, 2**53, (20000,), generator=generator) // (b + 1)
        for a in (n * b - 1, n * b, n * b + 1, n * b + b - 1):
            ok = (a >= 0) & (a + b <= 2**53)
            a_ok, b_ok = a[ok], b[ok]
            assert torch.equal(arithmetic.floor_div(a_ok.double(), b_ok.double()).long(), a_ok // b_ok)


def test_frequencies_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        frequencies(torch.zeros(3, 4))  # float
    with pytest.raises(ValueError):
        frequencies(torch.zeros(3, 1, dtype=torch.int64))


def test_input_quantiser_follows_the_spec() -> None:
    for in_range in (1, 2, 127, 128, 1000, 5321, 2**16, ACT_MAX):
        m, t = input_quantiser(in_range)
        assert Q_MAX * 2**t >= 2**14 * in_range > Q_MAX * 2 ** (t - 1) if t else True  # the smallest t
        assert 2**14 <= m <= 2**15
        exact = Fraction(Q_MAX * 2**t, in_range)
        assert abs(m - exact) <= Fraction(1, 2) and (m - exact != -Fraction(1, 2))  # nearest, ties up
    for bad in (0, ACT_MAX + 1):
        with pytest.raises(ValueError, match="input range"):
            input_quantiser(bad)


def test_weight_quantisation_follows_the_spec() -> None:
    """exact.md §3.2, checked in exact rationals against the stored layer of a 3x3 masked convolution."""
    layer, conv = EXACT["top"].blocks[0].conv2, PRIORS["top"].blocks[0].conv2
    in_range = EXACT_RANGES["top"]["blocks.0.conv2"]
    m, t = input_quantiser(in_range)
    assert layer.in_scale == m * 2.0**-t
    weights = layer.weight8.long().T  # [out, fan_in]
    assert weights.abs().max() <= Q_MAX
    rows = (conv.weight * conv.mask).detach()
    for c in range(weights.shape[0]):
        row = [
            rows[c, i, dy + 1, dx + 1].item()
            for dy, dx in masked_offsets(3, False)
            for i in range(conv.in_channels)
        ]
        top = max(abs(w) for w in row)
        expected = [round(Fraction(w) * Q_MAX / Fraction(top)) for w in row]  # rhe of the exact quotient
        assert weights[c].tolist() == expected  # (each IEEE quotient rounds to the same integer here)
        r = Fraction(top) * 2**t / (Q_MAX * m)
        scale = Fraction(layer.scale[c].item())  # M_c 2^-t_c
        shift = min(T_MAX, 15 - math.frexp(float(r))[1])
        assert scale * 2**shift == round(r * 2**shift) and 2**14 <= scale * 2**shift <= 2**15
        bias = round(Fraction(conv.bias[c].item()) * 2 ** (FA + shift))
        folded = bias + 2 ** (shift - 1)  # B_c + 2^(t_c - 1) = high 2^t_c + low
        assert layer.bias_high[c].item() == folded >> shift
        assert Fraction(layer.bias_low[c].item()) * 2**shift == folded - (folded >> shift << shift)
        assert torch.equal(layer.weight[:, c], weights[c].double() * layer.scale[c])


def test_float64_products_give_the_int8_products_tables(monkeypatch) -> None:
    """Devices without int8 products (CUDA) multiply the same 8-bit integers in float64 GEMMs."""
    codes = torch.randint(32, (5, 7), generator=torch.Generator().manual_seed(2))
    for kind in ("top", "bottom"):
        cond = random_cond(PRIORS[kind], 5, 7)
        int8 = stepper_tables(EXACT[kind], codes, cond), logits_full(EXACT[kind], codes, cond)
        with monkeypatch.context() as patch:
            patch.setattr(quantise, "INT8_DEVICES", frozenset())
            prior = calibrated(PRIORS[kind])
            float64 = stepper_tables(prior, codes, cond), logits_full(prior, codes, cond)
            assert prior.blocks[0].conv1.weight.dtype == torch.float64
        assert all(np.array_equal(a, b) for a, b in zip(int8[0], float64[0], strict=True))
        assert torch.equal(int8[1], float64[1])


@pytest.mark.parametrize("kind", ["top", "top_k5", "bottom", "three_bottom"])
def test_close_to_float_model(kind: str) -> None:
    prior, quantised = PRIORS[kind], EXACT[kind]
    h, w = 7, 9
    codes = torch.randint(prior.codebook_size, (h, w), generator=torch.Generator().manual_seed(3))
    cond = random_cond(prior, h, w)
    with torch.no_grad():
        reference = prior(codes[None], [c[None] for c in cond] or None)[0].permute(1, 2, 0)
    error = (logits_full(quantised, codes, cond) / 2**FA - reference).abs().max().item()
    print(f"{kind}: max |exact - float| logit difference {error:.4f}")
    assert error < 0.05  # 0.015 to 0.026 with 8-bit inputs and weights


def peaked(prior: PixelSNAILPrior, factor: float) -> PixelSNAILPrior:
    """A copy of ``prior`` with its logits scaled: a peaked distribution, like a trained prior's."""
    copy = PixelSNAILPrior(prior.config, prior.codebook_size, prior.cond_codebook_sizes).double().eval()
    copy.load_state_dict(prior.state_dict())
    with torch.no_grad():
        copy.out_conv.weight.mul_(factor)
        copy.out_conv.bias.mul_(factor)
    return copy


def test_quantisation_costs_no_measurable_bits() -> None:
    top, bottom = peaked(PRIORS["top"], 12.0), peaked(PRIORS["bottom"], 12.0)
    levels = sample_codes([top, bottom], [(5, 6), (10, 12)], n=4, generator=torch.Generator().manual_seed(1))
    for prior, codes, above in ((top, levels[0], None), (bottom, levels[1], levels[0])):
        quantised = calibrated(prior)
        float_bits = prior.nll_bits(codes, [above] if above is not None else None).item()
        bits = 0.0
        for i, image in enumerate(codes):
            logits = logits_full(quantised, image, [above[i]] if above is not None else [])
            tables = frequencies(logits.view(-1, prior.codebook_size)).numpy()
            bits += entropy.ideal_bits(image.reshape(-1).numpy(), tables)
        exact_bits = bits / codes.numel()
        print(f"float {float_bits:.4f} bits/code, exact {exact_bits:.4f} bits/code")
        assert abs(exact_bits - float_bits) < 0.005 * float_bits


@pytest.mark.parametrize("kind", sorted(PRIORS))
@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 5), (5, 1), (3, 7), (6, 4)])
def test_stepper_matches_full_evaluation(kind: str, h: int, w: int) -> None:
    prior = EXACT[kind]
    codes = torch.randint(prior.codebook_size, (h, w), generator=torch.Generator().manual_seed(h * 10 + w))
    cond = random_cond(PRIORS[kind], h, w)
    full = logits_full(prior, codes, cond)
    tables = stepper_tables(prior, codes, cond)
    assert len(tables) == order.n_steps(h, w)
    for t, table in enumerate(tables):
        ys, xs = order.wavefront(t, h, w)
        assert table.dtype == np.int64 and np.array_equal(table, frequencies(full[ys, xs]).numpy()), t


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_full_evaluation_in_bands_of_one_row(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``logits_full`` evaluates bands of rows that read the rows above from its caches: bands of one
    row give the logits of one band (a prior with wider kernels reads the row below: one band);
    ``tables_full`` their tables."""
    prior = EXACT[kind]
    codes = torch.randint(prior.codebook_size, (7, 6), generator=torch.Generator().manual_seed(3))
    cond = random_cond(PRIORS[kind], 7, 6)
    whole, one_row = logits_full(prior, codes, cond), dataclasses.replace(prior, chunk=1)
    assert torch.equal(logits_full(one_row, codes, cond), whole)
    tables = frequencies(whole.view(-1, prior.codebook_size)).view(whole.shape).numpy()
    spans = entropy.spans(tables.reshape(-1, prior.codebook_size), codes.reshape(-1).numpy()).reshape(7, 6, 2)
    for spread in (one_row, prior):  # in the kernels, on the CPU
        assert np.array_equal(tables_full(spread, codes, cond), tables)
        assert np.array_equal(tables_full(spread, codes, cond, spans=True), spans)
    monkeypatch.setattr(exact_stepper, "_WHOLE_FLOAT64_BYTES", -1)  # float32 caches, torch calls
    assert np.array_equal(tables_full(prior, codes, cond), tables)
    assert np.array_equal(tables_full(prior, codes, cond, spans=True), spans)
    # where a band would read the rows below it, the encoder walks the map step by step instead
    encoder = encoder_stepper(one_row, [codes], [cond])
    assert isinstance(encoder, KnownCodes) == (prior.kernel_size == 3)


@pytest.mark.parametrize("kind", sorted(PRIORS))
@pytest.mark.parametrize(("h", "w"), [(5, 90), (40, 70), (9, 3)])
def test_windowed_caches_match_full_evaluation(kind: str, h: int, w: int) -> None:
    """Maps with many more steps than the caches have slots (they slide several times), and fewer."""
    prior = EXACT[kind]
    codes = torch.randint(prior.codebook_size, (h, w), generator=torch.Generator().manual_seed(h + w))
    cond = random_cond(PRIORS[kind], h, w)
    slots, n_steps = prior.stepper(h, w, cond).slots, order.n_steps(h, w)
    assert n_steps > 2 * slots if w > 3 else n_steps < slots
    full = logits_full(prior, codes, cond)
    for t, table in enumerate(stepper_tables(prior, codes, cond)):
        ys, xs = order.wavefront(t, h, w)
        assert np.array_equal(table, frequencies(full[ys, xs]).numpy()), t


def test_caches_slide_when_the_attention_reads_further_back_than_the_slide() -> None:
    """Radius 12: taps 36 steps back, more than the 32 extra slots; the kept steps must not overlap."""
    torch.manual_seed(3)
    config = PriorConfig(channels=8, n_blocks=2, attention_every=1, n_heads=2, attention_radius=12)
    prior = ExactPrior.from_float(PixelSNAILPrior(config, 16).double().eval())
    codes = torch.randint(16, (14, 150), generator=torch.Generator().manual_seed(0))
    stepper = prior.stepper(14, 150, [])
    assert stepper.slots >= 2 * stepper.lag and order.n_steps(14, 150) > 2 * stepper.slots
    full = logits_full(prior, codes, [])
    for t, table in enumerate(stepper_tables(prior, codes, [])):
        ys, xs = order.wavefront(t, 14, 150)
        assert np.array_equal(table, frequencies(full[ys, xs]).numpy()), t


def test_cache_memory_does_not_grow_with_the_width() -> None:
    def cache_bytes(width: int) -> int:
        stepper = EXACT["top_k5"].stepper(4, width, [])
        return stepper.cache_bytes

    assert cache_bytes(3) == cache_bytes(3000) > 0


def test_same_tables_with_any_thread_count() -> None:
    torch.manual_seed(5)
    config = PriorConfig(channels=32, n_blocks=2, attention_every=1, n_heads=2, attention_radius=3)
    prior = ExactPrior.from_float(PixelSNAILPrior(config, 64))
    codes = torch.randint(64, (12, 16), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, full_one = stepper_tables(prior, codes, []), logits_full(prior, codes, [])
        torch.set_num_threads(2)
        two, full_two = stepper_tables(prior, codes, []), logits_full(prior, codes, [])
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert torch.equal(full_one, full_two)


def test_interleaved_images_give_the_same_tables() -> None:
    prior, float_prior = EXACT["bottom"], PRIORS["bottom"]
    g = torch.Generator().manual_seed(2)
    images = [torch.randint(32, (6, 8), generator=g) for _ in range(2)]
    conds = [random_cond(float_prior, 6, 8, seed=i) for i in range(2)]
    alone = [stepper_tables(prior, codes, cond) for codes, cond in zip(images, conds, strict=True)]
    steppers = [prior.stepper(6, 8, cond) for cond in conds]
    for t in range(steppers[0].n_steps):
        for i in (1, 0):
            ys, xs = steppers[i].positions(t)
            assert np.array_equal(steppers[i].freqs(t), alone[i][t])
            steppers[i].set_codes(t, images[i][ys, xs])


@pytest.mark.parametrize("kind", sorted(PRIORS))
@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 1), (6, 45)])
def test_batch_stepper_gives_each_image_its_own_tables(kind: str, h: int, w: int) -> None:
    """Three images in one stepper: every step's tables are each image's, position by position."""
    prior, g = EXACT[kind], torch.Generator().manual_seed(h * w)
    images = [torch.randint(prior.codebook_size, (h, w), generator=g) for _ in range(3)]
    conds = [random_cond(PRIORS[kind], h, w, seed=i) for i in range(3)]
    alone = [stepper_tables(prior, codes, cond) for codes, cond in zip(images, conds, strict=True)]
    batch = prior.batch_stepper(h, w, conds)
    for t in range(batch.n_steps):
        ys, xs = batch.positions(t)
        tables = batch.freqs(t)
        for i in range(3):
            assert np.array_equal(tables[i::3], alone[i][t]), (t, i)
        batch.set_codes(t, torch.stack([codes[ys, xs] for codes in images], dim=1).reshape(-1))


@pytest.mark.parametrize("context", ["cut", "per step"])
@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_batch_stepper_of_maps_of_several_sizes(kind: str, context: str, monkeypatch) -> None:
    """Maps smaller than the stepper's, inside it: on every step, the tables of the positions on each
    map are that map's own; the others are ignored, whatever codes they are given. ``context``: each
    step's conditioning rows and attention window cut from those of every position, or computed step
    by step (a stepper too large for the first)."""
    if context == "per step":
        monkeypatch.setattr(exact_stepper, "_STEP_CONTEXT_VALUES", 0)
    prior, g = EXACT[kind], torch.Generator().manual_seed(7)
    sizes = [(6, 9), (3, 9), (6, 4), (1, 2), (6, 9)]
    images = [torch.randint(prior.codebook_size, size, generator=g) for size in sizes]
    conds = [random_cond(PRIORS[kind], h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    alone = [stepper_tables(prior, codes, cond) for codes, cond in zip(images, conds, strict=True)]
    batch = prior.batch_stepper(6, 9, conds, sizes)
    for t in range(batch.n_steps):
        ys, xs = batch.positions(t)
        tables, on_map = batch.freqs(t), batch.on_map(t)
        expected = [
            alone[i][t][list(order.wavefront(t, h, w)[0]).index(y)]
            for y in ys.tolist()
            for i, (h, w) in enumerate(sizes)
            if y < h and 0 <= t - 2 * y < w
        ]
        assert np.array_equal(tables[on_map], np.array(expected).reshape(-1, prior.codebook_size)), t
        codes = torch.stack(
            [
                codes[ys.clip(max=h - 1), xs.clip(max=w - 1)]
                for codes, (h, w) in zip(images, sizes, strict=True)
            ],
            dim=1,
        )
        batch.set_codes(t, codes.reshape(-1) * torch.from_numpy(on_map) + 3 * torch.from_numpy(~on_map))
    assert prior.batch_stepper(6, 9, [conds[0]] * 5, [(6, 9)] * 5).on_map(0) is None
    with pytest.raises(ValueError, match="sizes"):
        prior.batch_stepper(6, 9, conds, [(7, 9)] * 5)


@pytest.mark.skipif(not fused.available(torch.device("cpu")), reason="vqcodec.exact._kernels was not built")
@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_compiled_kernels_give_the_torch_calls_tables(kind: str) -> None:
    """A step in one program of the compiled kernels (``fused.StepProgram``; its int8 products with
    AVX-512 VNNI where the CPU has it, and in the plain loop), as the kernels between torch's int8
    products, or in torch calls: the same tables, for maps of several sizes in one stepper (rows off a
    map masked)."""
    prior, g = EXACT[kind], torch.Generator().manual_seed(11)
    sizes = [(7, 12), (3, 12), (7, 5)]
    images = [torch.randint(prior.codebook_size, (7, 12), generator=g) for _ in sizes]
    conds = [random_cond(PRIORS[kind], h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    steppers = [prior.batch_stepper(7, 12, conds, sizes) for _ in range(4)]
    assert steppers[0]._fused and steppers[0]._program is not None
    steppers[2]._program = None  # the kernels between torch's products
    steppers[3]._fused, steppers[3]._program = False, None  # the torch calls of every other device
    vnni = [True, False, True, True]
    for t in range(steppers[0].n_steps):
        ys, xs = steppers[0].positions(t)
        tables = []
        for stepper, allowed in zip(steppers, vnni, strict=True):
            fused.use_vnni(allowed)
            tables.append(stepper.freqs(t))
        fused.use_vnni(True)
        assert all(np.array_equal(tables[0], other) for other in tables[1:]), t
        codes = torch.stack([codes[ys, xs] for codes in images], dim=1).reshape(-1)
        for stepper in steppers:
            stepper.set_codes(t, codes)


@pytest.mark.skipif(not fused.available(torch.device("cpu")), reason="vqcodec.exact._kernels was not built")
@pytest.mark.parametrize("vnni", [True, False])
def test_step_program_products_of_any_width(vnni: bool) -> None:
    """The kernels' int8 products where no width is a multiple of 16 and sums span several blocks of
    64 columns (12 channels, 24 gate channels, 72 codes), and a step's positions split over two threads
    (8 images side by side; the attention's window reaches rows above on the same wavefront): a step
    program's tables are the torch calls'. With 5x5 kernels, whose taps do, one thread."""
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    for kernel_size in (3, 5):
        config = PriorConfig(
            channels=12, n_blocks=2, attention_every=1, n_heads=3, attention_radius=2, kernel_size=kernel_size
        )
        prior = ExactPrior.from_float(PixelSNAILPrior(config, 72).double().eval())
        codes = torch.randint(72, (9, 11, 8), generator=torch.Generator().manual_seed(1))
        program, torch_calls = (prior.batch_stepper(9, 11, [[]] * 8) for _ in range(2))
        assert program._program is not None and program._program._rows_apart == (kernel_size == 3)
        torch_calls._fused, torch_calls._program = False, None
        try:
            fused.use_vnni(vnni)
            torch.set_num_threads(2)
            for t in range(program.n_steps):
                ys, xs = program.positions(t)
                assert np.array_equal(program.freqs(t), torch_calls.freqs(t)), t
                for stepper in (program, torch_calls):
                    stepper.set_codes(t, codes[ys, xs].reshape(-1))
        finally:
            fused.use_vnni(True)
            torch.set_num_threads(threads)


@pytest.mark.skipif(not fused.available(torch.device("cpu")), reason="vqcodec.exact._kernels was not built")
@pytest.mark.parametrize("kind", ["bottom", "three_bottom"])
@pytest.mark.parametrize(("h", "w"), [(9, 14), (1, 1), (2, 5)])
def test_compiled_kernels_give_the_torch_calls_conditioning(kind: str, h: int, w: int, monkeypatch) -> None:
    """The kernels' stack on three maps at once (stacked, each padded apart) gives each map's tables
    of the torch calls, map by map."""
    prior = EXACT[kind]
    maps = [random_cond(PRIORS[kind], h, w, seed=i) for i in range(3)]
    compiled = prior.condition_maps(maps, h, w)
    monkeypatch.setattr(fused, "_kernels", None)
    alone = [prior.condition(cond, h, w) for cond in maps]
    assert compiled is not None and all(
        torch.equal(a, torch.cat(b)) for a, *b in zip(compiled, *alone, strict=True)
    )


@pytest.mark.parametrize("kind", sorted(PRIORS))
@pytest.mark.parametrize(("h", "w", "batch"), [(1, 1, 1), (5, 1, 2), (1, 6, 1), (7, 40, 1), (6, 9, 3)])
def test_column_stepper_gives_the_wavefront_steppers_tables(kind: str, h: int, w: int, batch: int) -> None:
    """The CUDA graph's step (whole columns, rows off the map masked, a slide every step), run here
    without a graph: every step's tables are the wavefront stepper's."""
    prior, g = EXACT[kind], torch.Generator().manual_seed(h + w + batch)
    images = [torch.randint(prior.codebook_size, (h, w), generator=g) for _ in range(batch)]
    conds = [random_cond(PRIORS[kind], h, w, seed=i) for i in range(batch)]
    column, wavefront = ColumnStepper(prior, h, w, conds), prior.batch_stepper(h, w, conds)
    assert column.slots == column.lag + 1
    for t in range(column.n_steps):
        ys, xs = column.positions(t)
        tables = column.freqs(t)
        assert np.array_equal(tables, wavefront.freqs(t)), t
        codes = torch.stack([codes[ys, xs] for codes in images], dim=1).reshape(-1)
        column.set_codes(t, codes)
        wavefront.set_codes(t, codes)
    with pytest.raises(ValueError):
        column.freqs(column.n_steps)


def test_stepper_enforces_the_order() -> None:
    stepper = EXACT["top"].stepper(3, 4, [])
    with pytest.raises(ValueError):
        stepper.freqs(1)
    stepper.freqs(0)
    with pytest.raises(ValueError):
        stepper.freqs(1)  # the codes of step 0 are missing
    with pytest.raises(ValueError):
        stepper.set_codes(0, [1, 2])  # step 0 has one code
    with pytest.raises(ValueError):
        stepper.set_codes(0, [32])  # outside the codebook
    stepper.set_codes(0, [0])
    with pytest.raises(ValueError):
        stepper.set_codes(1, [0])  # codes before their tables could overwrite cached values still read
    with pytest.raises(ValueError):
        EXACT["bottom"].stepper(4, 4, [torch.zeros(3, 2, dtype=torch.int64)])


def test_moved_copy_and_refused_models() -> None:
    moved = EXACT["bottom"].to("cpu")
    assert moved is not EXACT["bottom"] and moved.device.type == "cpu"
    codes, cond = (
        torch.randint(32, (4, 6), generator=torch.Generator().manual_seed(0)),
        random_cond(PRIORS["bottom"], 4, 6),
    )
    assert torch.equal(logits_full(moved, codes, cond), logits_full(EXACT["bottom"], codes, cond))
    broken = make_priors()["top"]
    broken.blocks[0].conv1.mask[..., 1, 2] = 1.0  # reads offset (0, +1): not the decode order's mask
    with pytest.raises(ValueError):
        ExactPrior.from_float(broken)
    raster = PixelSNAILPrior(PriorConfig(channels=8, n_blocks=2, n_heads=2, attention_context="raster"), 16)
    with pytest.raises(ValueError, match="cannot be decoded in wavefronts"):
        ExactPrior.from_float(raster)


@pytest.mark.parametrize(("kind", "limit"), [("top", 2**24), ("bottom", 2**24), ("bottom", 1)])
@pytest.mark.parametrize("spans", [False, True])
def test_encoder_tables_equal_the_decoders(kind: str, limit: int, spans: bool) -> None:
    """The encoder's one-pass tables (or its stepper, for maps over the limit) are the decoder's, for
    two maps at once as for one; or, with ``spans``, the spans of their codes in them."""
    prior, codes = EXACT[kind], torch.randint(32, (2, 5, 7), generator=torch.Generator().manual_seed(1))
    cond = [random_cond(PRIORS[kind], 5, 7, seed) for seed in (0, 1)]
    for maps, conds in ((codes, cond), (codes[:1], cond[:1])):
        encoder = encoder_stepper(prior, list(maps), conds, limit, spans)
        decoder = prior.batch_stepper(5, 7, conds)
        assert isinstance(encoder, KnownCodes) == (limit > 1)
        for t in range(decoder.n_steps):
            ys, xs = decoder.positions(t)
            step_codes = maps[:, ys, xs].T.reshape(-1)
            tables = decoder.freqs(t)
            expected = entropy.spans(tables, step_codes.numpy()) if spans else tables
            assert np.array_equal(encoder.freqs(t), expected), t
            encoder.set_codes(t, step_codes)
            decoder.set_codes(t, step_codes)


def test_round_trip_through_the_range_coder() -> None:
    prior, h, w = EXACT["bottom"], 9, 13
    codes = torch.randint(32, (h, w), generator=torch.Generator().manual_seed(4))
    cond = random_cond(PRIORS["bottom"], h, w)
    encoder, stepper = entropy.RangeEncoder(), prior.stepper(h, w, cond)
    for t in range(stepper.n_steps):
        ys, xs = stepper.positions(t)
        encoder.encode(codes[ys, xs].numpy(), stepper.freqs(t))
        stepper.set_codes(t, codes[ys, xs])
    payload = encoder.finish()

    decoder, stepper = entropy.RangeDecoder(payload), prior.stepper(h, w, cond)
    decoded = torch.full((h, w), -1, dtype=torch.int64)
    for t in range(stepper.n_steps):
        ys, xs = stepper.positions(t)
        symbols = decoder.decode(stepper.freqs(t))
        stepper.set_codes(t, symbols)
        decoded[ys, xs] = torch.from_numpy(symbols)
    decoder.check_exhausted()
    assert torch.equal(decoded, codes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_tables() -> None:
    """Default-size top and bottom priors: identical tables (stepper and full) on CPU and CUDA."""
    torch.manual_seed(0)
    config = ModelConfig()
    top = PixelSNAILPrior(config.priors[0], 512)
    bottom = PixelSNAILPrior(config.priors[1], 512, (512,))
    g = torch.Generator().manual_seed(1)
    top_codes = torch.randint(512, (12, 18), generator=g)
    bottom_codes = torch.randint(512, (24, 36), generator=g)
    for prior, codes, cond in ((top, top_codes, []), (bottom, bottom_codes, [top_codes])):
        cpu = ExactPrior.from_float(prior)
        cuda = cpu.to("cuda")
        assert cuda.device.type == "cuda"
        cond_cuda = [c.cuda() for c in cond]
        assert torch.equal(logits_full(cpu, codes, cond), logits_full(cuda, codes.cuda(), cond_cuda).cpu())
        on_cpu, on_cuda = stepper_tables(cpu, codes, cond), stepper_tables(cuda, codes.cuda(), cond_cuda)
        assert all(np.array_equal(a, b) for a, b in zip(on_cpu, on_cuda, strict=True))
