from mltrain.config import TrainConfig
from mltrain.train.optim import lr_at


def test_warmup_then_cosine_to_floor():
    tc = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(1, tc) == 1e-4
    assert lr_at(10, tc) == 1e-3
    assert abs(lr_at(60, tc) - (1e-4 + 0.9e-3 * 0.5)) < 1e-12
    assert abs(lr_at(110, tc) - 1e-4) < 1e-12
    values = [lr_at(s, tc) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
