"""Slurm time limits in every form sbatch takes, read once: `submit --time` and the cluster spec's
`slurm.time` both normalise through here, so a limit Slurm accepts is never refused and a typo
(`5:75`) is never read differently by Slurm."""

from __future__ import annotations

TIME_FORMS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def parse_slurm_time(time: str | int) -> tuple[str, int]:
    """(HH:MM:SS or D-HH:MM:SS, seconds) of a Slurm time limit; ValueError if sbatch would refuse or misread it.

    The first field may be any size (90 minutes, 100:00:00); the later ones must be under 60 (hours under 24
    after a day count)."""
    bad = ValueError(f"expected a Slurm time limit ({TIME_FORMS}), longer than 0")
    t = str(time).strip()
    days: int | None = None
    if "-" in t:
        d, _, t = t.partition("-")
        if not d.isdigit() or not t:
            raise bad
        days = int(d)
    fields = t.split(":")
    if not all(f.isdigit() for f in fields) or not 1 <= len(fields) <= 3:
        raise bad
    v = [int(f) for f in fields]
    if days is None:  # minutes | MM:SS | HH:MM:SS
        h, m, sec = (0, v[0], 0) if len(v) == 1 else (0, v[0], v[1]) if len(v) == 2 else (v[0], v[1], v[2])
        limits_ok = all(x < 60 for x in v[1:])
    else:  # D-HH | D-HH:MM | D-HH:MM:SS
        h, m, sec = (v + [0, 0])[:3]
        limits_ok = h < 24 and m < 60 and sec < 60
    total = (days or 0) * 86400 + h * 3600 + m * 60 + sec
    if not limits_ok or total <= 0:
        raise bad
    h, rest = divmod(total - (days or 0) * 86400, 3600)
    hms = f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return (f"{days}-{hms}" if days else hms), total
