"""The shell blocks of the docs, read for the doc tests: which blocks run, how, and what their output must show.

A shell block is a fenced block labelled ```bash, ```sh or ```console, or an unlabelled fence with a line
that starts with `mltrain` or `$ `. HTML comments right before a fence (blank lines between them allowed)
carry the directives, one per comment:

    <!-- doc-test: aws -->                 needs AWS: `bash -n` and the CLI's flag check only
    <!-- doc-test: gpu -->                 needs a GPU: the same
    <!-- doc-test: s3 -->                  runs against the local S3 server (buckets named in s3:// URLs made first)
    <!-- doc-test: slurm -->               runs against the local Slurm, in the Slurm test stream
    <!-- doc-test: spark -->               starts Spark (local[*]): runs in the Spark test stream
    <!-- doc-test: skip reason=WHY -->     not run (still checked like aws, unless the reason starts with "pending");
                                           the reason is required, and a test lists and caps the skips. Before
                                           an output block: its output is not checked yet
    <!-- doc-test: append "mltrain train" --set train.max_steps=4 -->
                                           extra arguments for the test run of every command starting so
    <!-- doc-test: fixture demo -->        a trained run copied into the work directory first (tests/docs/runner.py FIXTURES)
    <!-- doc-test: env COLUMNS=120 -->     environment for this block's commands (e.g. a wider terminal)
    <!-- doc-test: rc=0,2,0 -->            the exit status of each command of the block, in order (default all 0)
    <!-- doc-test: setup
    printf 'x\n' > held-out.txt
    -->                                    hidden commands run (with bash) before the block
    <!-- doc-test: expect [lines=2,4-6] [numbers=any] -->
                                           before a ```text (or unlabelled) block: its lines (or the listed ones)
                                           are key lines the previous shell block's output must show, in order (several
                                           output blocks may follow one shell block);
                                           before a `$ ` block: that command's shown output is the expectation.

docs/testing.md documents the same for doc writers.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGS = {"bash", "sh", "console", "shell"}
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*(-->)?\s*$")
KINDS = ("aws", "gpu", "s3", "slurm", "spark", "skip")


class DirectiveError(ValueError):
    """A doc-test comment the harness cannot read: the doc is wrong, the test says where."""


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md, docs/*.md and docs/ko/*.md (when they exist), in a stable order."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "docs" / "ko").glob("*.md"))]
    return [f for f in files if f.is_file()]


@dataclass
class Expect:
    """Key lines an output must show, in order; `...` on a line of its own skips any lines, inside a line any
    text; with numbers="any" every number matches any number."""

    lines: list[str]
    numbers_any: bool = False
    line_no: int = 0


@dataclass
class Block:
    path: Path
    line_no: int  # the opening fence, 1-based
    lang: str
    text: str
    kind: str = "run"  # run | aws | gpu | s3 | slurm | spark | skip
    reason: str = ""
    appends: list[tuple[list[str], list[str]]] = field(default_factory=list)
    setup: str = ""
    fixtures: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    rc: list[int] = field(default_factory=list)  # per command; empty: all 0
    expects: list[Expect] = field(default_factory=list)  # a `$ ` block's shown output, the output blocks after it

    @property
    def where(self) -> str:
        rel = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{rel}:{self.line_no}"

    @property
    def runs(self) -> bool:
        return self.kind in ("run", "s3", "slurm", "spark")

    def commands(self) -> list[str]:
        """The block's commands, one logical line each: continuation lines joined, `$ ` prompts stripped,
        comment-only and blank lines dropped; in a `$ ` block only the prompted lines are commands."""
        raw = self.text.splitlines()
        prompted = any(line.startswith("$ ") for line in raw)
        out: list[str] = []
        cur = ""
        for line in raw:
            if prompted and not cur:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if line.rstrip().endswith("\\"):
                cur += line.rstrip()[:-1] + " "
                continue
            cur += line
            if cur.strip() and not cur.strip().startswith("#"):
                out.append(cur.strip())
            cur = ""
        if cur.strip():
            out.append(cur.strip())
        return out

    def shown_output(self) -> list[str]:
        """In a `$ ` block: the lines after the (last) command, what the doc says it prints."""
        lines = self.text.splitlines()
        last = max((i for i, line in enumerate(lines) if line.startswith("$ ")), default=-1)
        j = last + 1
        while j < len(lines) and lines[j - 1].rstrip().endswith("\\"):
            j += 1
        return lines[j:]


def _is_shell(lang: str, body: list[str]) -> bool:
    if lang in SHELL_LANGS:
        return True
    return lang == "" and any(line.startswith("mltrain") or line.startswith("$ ") for line in body)


def _parse_directive(text: str, where: str) -> tuple[str, dict[str, str], list[str]]:
    """(name, key=value options, other words) of one directive's first line."""
    if text.split(None, 1)[:1] == ["skip"]:
        m = re.match(r"skip\s+reason=(.+)$", text.strip())
        if not m or not m.group(1).strip():
            raise DirectiveError(f"{where}: `doc-test: skip` needs reason=WHY")
        return "skip", {"reason": m.group(1).strip()}, []
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise DirectiveError(f"{where}: doc-test directive {text!r}: {e}") from None
    if not words:
        raise DirectiveError(f"{where}: empty doc-test directive")
    name, rest = words[0], words[1:]
    opts: dict[str, str] = {}
    if name.startswith("rc="):
        return "rc", {"rc": name[3:]}, []
    if name in ("expect",):
        for w in rest:
            k, sep, v = w.partition("=")
            if not sep or k not in ("lines", "numbers"):
                raise DirectiveError(f"{where}: doc-test expect takes lines=... and numbers=any, not {w!r}")
            opts[k] = v
        return name, opts, []
    return name, opts, rest


def _line_set(spec: str, n: int, where: str) -> list[int]:
    """'2,4-6' -> [1, 3, 4, 5] (0-based), each within the block's n lines."""
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise DirectiveError(f"{where}: expect lines={spec!r}: not a list of line numbers") from None
        if not 1 <= lo <= hi <= n:
            raise DirectiveError(f"{where}: expect lines={spec!r}: the block has {n} lines")
        out.extend(range(lo - 1, hi))
    return out


def parse(path: Path, text: str | None = None) -> list[Block]:
    """The shell blocks of one markdown file, with their directives and expectations attached."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    pending: list[tuple[int, str, dict[str, str], list[str], str]] = []  # line, name, opts, words, body
    i = 0
    while i < len(lines):
        line = lines[i]
        where = f"{path.name}:{i + 1}"
        m = DIRECTIVE.match(line.strip())
        if m:
            first, closed = m.group(1), m.group(2) is not None
            body: list[str] = []
            if not closed:
                i += 1
                while i < len(lines) and lines[i].strip() != "-->":
                    body.append(lines[i])
                    i += 1
                if i >= len(lines):
                    raise DirectiveError(f"{where}: doc-test comment never closed with -->")
            name, opts, words = _parse_directive(first, where)
            pending.append((i + 1, name, opts, words, "\n".join(body)))
            i += 1
            continue
        fm = FENCE.match(line)
        if not fm:
            if line.strip() and pending:
                raise DirectiveError(f"{where}: a doc-test directive must come right before a fenced block")
            i += 1
            continue
        ticks, lang = fm.group(1), fm.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith(ticks):
            j += 1
        body_lines = lines[i + 1 : j]
        if _is_shell(lang, body_lines):
            blocks.append(_block(path, i + 1, lang, body_lines, pending))
        elif pending and [p[1] for p in pending] == ["skip"]:  # an output block whose check waits (pending)
            blocks.append(_block(path, i + 1, lang, [], pending))
        elif pending:
            _attach_expect(path, i + 1, body_lines, pending, blocks)
        pending = []
        i = j + 1
    if pending:
        raise DirectiveError(f"{path.name}: a doc-test directive at the end of the file belongs to no block")
    return blocks


def _block(path: Path, line_no: int, lang: str, body: list[str], pending: list) -> Block:
    b = Block(path=path, line_no=line_no, lang=lang, text="\n".join(body))
    where = b.where
    for _, name, opts, words, setup in pending:
        if name in KINDS:
            if b.kind != "run":
                raise DirectiveError(f"{where}: two kinds for one block ({b.kind}, {name})")
            b.kind = name
            b.reason = opts.get("reason", "")
        elif name == "append":
            if len(words) < 2:
                raise DirectiveError(
                    f'{where}: doc-test append needs a command prefix and arguments: append "mltrain train" --set ...'
                )
            b.appends.append((shlex.split(words[0]), words[1:]))
        elif name == "fixture":
            if not words:
                raise DirectiveError(f"{where}: doc-test fixture needs a name, e.g. fixture demo")
            b.fixtures.extend(words)
        elif name == "env":
            if not words or not all("=" in w for w in words):
                raise DirectiveError(f"{where}: doc-test env takes KEY=VALUE words, e.g. env COLUMNS=120")
            b.env.update(w.split("=", 1) for w in words)
        elif name == "setup":
            b.setup = setup
        elif name == "rc":
            try:
                b.rc = [int(x) for x in opts["rc"].split(",")]
            except ValueError:
                raise DirectiveError(f"{where}: doc-test rc= takes exit statuses, e.g. rc=0,2,0") from None
            if len(b.rc) != len(b.commands()):
                raise DirectiveError(
                    f"{where}: doc-test rc= lists {len(b.rc)} statuses for {len(b.commands())} commands"
                )
        elif name == "expect":
            if not any(line.startswith("$ ") for line in body):
                raise DirectiveError(f"{where}: `doc-test: expect` on a shell block needs a `$ ` transcript")
            b.expects.append(_expect(b.shown_output(), opts, where, line_no))
        else:
            raise DirectiveError(f"{where}: unknown doc-test directive {name!r}")
    return b


def _expect(body: list[str], opts: dict[str, str], where: str, line_no: int) -> Expect:
    if opts.get("numbers", "exact") not in ("any", "exact"):
        raise DirectiveError(f"{where}: expect numbers= is any or exact")
    keep = _line_set(opts["lines"], len(body), where) if "lines" in opts else range(len(body))
    lines = [body[k] for k in keep]
    if not [x for x in lines if x.strip() and x.strip() != "..."]:
        raise DirectiveError(f"{where}: doc-test expect on a block with no key lines")
    return Expect(lines=lines, numbers_any=opts.get("numbers") == "any", line_no=line_no)


def _attach_expect(path: Path, line_no: int, body: list[str], pending: list, blocks: list[Block]) -> None:
    where = f"{path.name}:{line_no}"
    names = [p[1] for p in pending]
    if names != ["expect"]:
        raise DirectiveError(f"{where}: only `doc-test: expect` may precede an output block, not {names}")
    if not blocks:
        raise DirectiveError(f"{where}: doc-test expect with no shell block before it")
    blocks[-1].expects.append(_expect(body, pending[0][2], where, line_no))


# ------------------------------------------------------------------ matching shown output


NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def _line_pattern(line: str, numbers_any: bool) -> re.Pattern[str]:
    """A key line as a regex: any run of whitespace matches any run of whitespace (so a line the terminal
    wrapped still matches), `...` any text, and (numbers_any) each number any number."""
    out = []
    for k, part in enumerate(line.strip().split("...")):
        if k:
            out.append(".*?")
        pos = 0
        for m in NUMBER.finditer(part) if numbers_any else ():
            out.append(_literal(part[pos : m.start()]))
            out.append(NUMBER.pattern)
            pos = m.end()
        out.append(_literal(part[pos:]))
    return re.compile("".join(out), re.DOTALL)


def _literal(s: str) -> str:
    words = s.split()
    body = r"\s+".join(re.escape(w) for w in words)
    lead = r"\s*" if s[:1].isspace() else ""
    trail = r"\s*" if s[-1:].isspace() else ""
    return lead + body + trail if words else (r"\s*" if s else "")


def match_output(expect: Expect, output: str) -> str | None:
    """None when every key line appears in the output in order (each after the one before); else a message
    naming the first key line not found."""
    pos = 0
    for key in expect.lines:
        if not key.strip() or key.strip() == "...":
            continue
        m = _line_pattern(key, expect.numbers_any).search(output, pos)
        if m is None:
            shown = output[:pos].count("\n") + 1
            return f"key line not in the output (searched from output line {shown}): {key.strip()!r}"
        pos = m.end()
    return None


# ------------------------------------------------------------------ the CLI's command tree


def mltrain_invocations(command: str) -> list[list[str]]:
    """Every `mltrain ...` invocation in a command line (after pipes, `&&`, `srun ...`, `-m mltrain`): its
    words up to the next shell operator, comments dropped."""
    try:
        lex = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
        lex.whitespace_split = True
        lex.commenters = "#"
        words = list(lex)
    except ValueError:
        return []
    out: list[list[str]] = []
    cur: list[str] | None = None
    cmd: list[str] = []  # the words of the current simple command so far
    for w in words:
        if w and set(w) <= set(";&|()<>"):
            if cur is not None:
                out.append(cur)
            cur, cmd = None, []
            continue
        if cur is not None:
            cur.append(w)
        elif _is_mltrain(w) and _command_position(cmd):
            cur = []
        cmd.append(w)
    if cur is not None:
        out.append(cur)
    return out


LAUNCHERS = {"srun", "sudo", "env", "nice", "time", "timeout", "exec", "xargs"}


def _is_mltrain(word: str) -> bool:
    return word == "mltrain" or (word.endswith("/mltrain") and "=" not in word)


def _command_position(before: list[str]) -> bool:
    """`mltrain` is run by this command, not an argument of it: first word (after VAR=value), after
    `-m` (python/torchrun -m mltrain), or after a launcher (srun, sudo ...) and its --key=value options."""
    words = [w for w in before if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)] if before else []
    if not words:
        return True
    if words[-1] == "-m":
        return True
    return words[0] in LAUNCHERS and (len(words) == 1 or (words[-1].startswith("-") and "=" in words[-1]))


def check_flags(app_command, args: list[str]) -> str | None:
    """None when `mltrain ARGS` names an existing subcommand path and only options that command accepts;
    else a one-line reason. Values are not converted (placeholders like FLEET.yaml are fine)."""
    cmd, path = app_command, ["mltrain"]
    k = 0
    while getattr(cmd, "commands", None) is not None:
        if k >= len(args) or args[k].startswith("-"):
            if k < len(args) and args[k] in ("--help", "-h"):
                return None
            return f"`{' '.join(path)}` needs a subcommand ({', '.join(sorted(cmd.commands))})"
        name = args[k]
        if name in cmd.commands:
            cmd = cmd.commands[name]
            path.append(name)
            k += 1
            continue
        default = next((c for c in cmd.commands.values() if getattr(c, "hidden", False)), None)
        if type(cmd).__name__ == "_PlanGroup" and default is not None:
            cmd = default
            break
        return f"`{' '.join(path)}` has no subcommand {name!r} ({', '.join(sorted(cmd.commands))})"
    takes_value: dict[str, bool] = {"--help": False}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") != "option":
            continue
        for o in [*p.opts, *getattr(p, "secondary_opts", [])]:
            takes_value[o] = not (p.is_flag or getattr(p, "count", False))
    rest = args[k:]
    j = 0
    while j < len(rest):
        w = rest[j]
        j += 1
        if w == "--":
            break
        if not w.startswith("-") or w == "-" or re.match(r"^-\d", w):
            continue
        opt = w.split("=", 1)[0]
        if opt not in takes_value:
            return f"`{' '.join(path)}` has no option {opt} (it takes {', '.join(sorted(takes_value))})"
        if takes_value[opt] and "=" not in w:
            j += 1
    return None
