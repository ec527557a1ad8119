import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secformer import FixedPoint, FixedPointRangeError

FX = FixedPoint(16)
safe = st.floats(min_value=-FX.bound, max_value=FX.bound, allow_nan=False, allow_infinity=False)


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=6), elements=safe))
def test_encode_decode_roundtrip_error_at_most_half_ulp(x):
    back = FX.decode(FX.encode(x))
    assert np.all(np.abs(back - x) <= 0.5 / FX.scale + 1e-12)


@given(st.integers(min_value=0, max_value=24), safe)
def test_roundtrip_for_every_precision(f, v):
    fx = FixedPoint(f)
    v = float(np.clip(v, -fx.bound, fx.bound))
    assert abs(fx.decode(fx.encode(v)) - v) <= 0.5 / fx.scale + 1e-9


@given(st.floats(min_value=FX.bound * 1.0001, max_value=1e30))
def test_out_of_range_rejected_naming_count_and_bound_never_the_value(v):
    with pytest.raises(FixedPointRangeError) as e:
        FX.encode(np.array([0.0, -v, 1.0]))
    msg = str(e.value)
    assert "1 of 3 values" in msg and "bound 32768" in msg
    assert f"{v:g}" not in msg and f"{v}" not in msg, "an input value leaked into the error"


@pytest.mark.parametrize("bad", [np.array(["1.0"]), np.array([1 + 2j]), np.array([None, 1.0], dtype=object)])
def test_non_real_dtypes_rejected_by_name(bad):
    with pytest.raises(FixedPointRangeError, match=f"dtype {bad.dtype}"):
        FX.encode(bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    with pytest.raises(FixedPointRangeError, match="non-finite"):
        FX.encode(np.array([1.0, bad]))


def test_negative_values_are_twos_complement():
    assert FX.encode(-1.0) == np.uint64(2**64 - 2**16)
    assert FX.decode(np.uint64(2**64 - 1)) == -(2.0**-16)


def test_invalid_formats_rejected():
    with pytest.raises(FixedPointRangeError):
        FixedPoint(40)
    with pytest.raises(FixedPointRangeError):
        FixedPoint(16, max_abs=2.0**50)
