"""`orch bench`: how many people one server holds, measured with concurrent multi-turn chats.

For each concurrency level, that many simulated users each hold a
conversation of `turns` turns at once, streaming every reply through
/api/chat. Per level it reports the time to first token (p50, p95), tokens
per second per user (a reply's tokens over its time from sending to the last
token, as the user waits for it) and in total, and errors. The loops are bounded: each
reply is capped at `max_tokens`, each request at `timeout`, each level at
`level_timeout` seconds; a level that runs out of time stops sending.

Given several servers (the replicas of one model), the users are spread over
them, and `route` says how: "conversation" keeps each user's conversation on
one server, whose KV cache still holds its earlier turns; "turn" sends each
turn to the next server, as a balancer that ignores conversations does.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

from orchestrator import names
from orchestrator.errors import BadInput, OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.ollama.client import START_IT, Ollama, StreamError, TransportError, explain

PROMPTS = ["你好，请介绍一下你自己。", "What can you help me with today?", "请用三句话解释什么是量化。",
           "Give me one tip for writing clear emails.", "北京有哪些值得去的地方？", "Summarise our conversation so far."]


@dataclass(frozen=True)
class BenchPlan:
    model: str
    users: tuple[int, ...] = (1, 2, 4, 8)
    turns: int = 3
    max_tokens: int = 64
    timeout: float = 120.0
    level_timeout: float = 600.0
    ttft_target: float = 2.0
    route: str = "conversation"  # with several servers: each conversation on one (conversation), or each turn on the next (turn)

    def __post_init__(self):
        if not self.users or min(self.users) < 1 or max(self.users) > 256:
            raise BadInput("--users takes concurrency levels from 1 to 256, e.g. --users 1,2,4,8")
        if not 1 <= self.turns <= 50:
            raise BadInput("--turns takes 1 to 50 turns per conversation")
        if self.route not in ROUTES:
            raise BadInput(f"--route {self.route!r} is not {' or '.join(ROUTES)}")


ROUTES = ("conversation", "turn")


@dataclass
class Turn:
    ttft: float | None
    seconds: float
    tokens: int
    error: str | None = None
    text: str = ""


@dataclass
class Level:
    users: int
    requests: int
    errors: int
    seconds: float
    ttft_p50: float | None
    ttft_p95: float | None
    tokens_per_s_per_user: float | None
    tokens_per_s_total: float
    error_samples: list[str] = field(default_factory=list)

    def meets(self, target: float) -> bool:
        return self.errors == 0 and self.ttft_p95 is not None and self.ttft_p95 <= target


def parse_users(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise BadInput(f"--users {text!r} is not a list of numbers: pass e.g. --users 1,2,4,8") from None
    return levels


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def server_for(servers: list[Ollama], route: str, user: int, turn: int) -> Ollama:
    return servers[(user + (turn if route == "turn" else 0)) % len(servers)]


def conversation(servers: list[Ollama], plan: BenchPlan, user: int, deadline: float) -> list[Turn]:
    """One simulated user: `turns` messages, each sent once the previous reply has streamed in."""
    history, out = [], []
    for turn in range(plan.turns):
        if time.monotonic() > deadline:
            break
        history.append({"role": "user", "content": PROMPTS[(user + turn) % len(PROMPTS)]})
        result = chat_once(server_for(servers, plan.route, user, turn), plan, history)
        out.append(result)
        if result.error:
            break
        history.append({"role": "assistant", "content": result.text})
    return out


def chat_once(server: Ollama, plan: BenchPlan, messages: list[dict]) -> Turn:
    """One reply, streamed; a failure is the turn's error, never an exception, so the level goes on."""
    body = {"model": plan.model, "messages": messages, "stream": True, "options": {"num_predict": plan.max_tokens, "temperature": 0.7}}
    t0 = time.monotonic()
    try:
        s = server.read_stream("/api/chat", body, lambda line: (line.get("message") or {}).get("content", ""), plan.timeout)
    except StreamError as e:
        return Turn(None, time.monotonic() - t0, 0, str(e))
    except TransportError as e:
        return Turn(None, time.monotonic() - t0, 0, explain(e))
    return Turn(s.ttft, s.seconds, int(s.final.get("eval_count") or 0), text=s.text)


def run_level(servers: list[Ollama], plan: BenchPlan, users: int) -> Level:
    deadline = time.monotonic() + plan.level_timeout
    t0 = time.monotonic()
    with ThreadPoolExecutor(users, thread_name_prefix="bench-user") as pool:
        turns = [t for conv in pool.map(lambda u: conversation(servers, plan, u, deadline), range(users)) for t in conv]
    seconds = time.monotonic() - t0
    ok = [t for t in turns if t.error is None]
    ttfts = [t.ttft for t in ok if t.ttft is not None]
    # what a user sees: the reply's tokens over the time from sending it to its last token, the wait for a slot and the
    # prompt included (Ollama's eval rate alone counted only decoding, and read 20 times the total for one user)
    per_user = [t.tokens / t.seconds for t in ok if t.seconds > 0 and t.tokens]
    return Level(users=users, requests=len(turns), errors=len(turns) - len(ok), seconds=round(seconds, 3),
                 ttft_p50=_r(percentile(ttfts, 50)), ttft_p95=_r(percentile(ttfts, 95)),
                 tokens_per_s_per_user=_r(statistics.median(per_user)) if per_user else None,
                 tokens_per_s_total=round(sum(t.tokens for t in ok) / seconds, 2) if seconds else 0.0,
                 error_samples=sorted({t.error for t in turns if t.error})[:3])


def bench(plan: BenchPlan, hosts: list[str | None], *, reporter: Reporter = SILENT, stop: threading.Event | None = None) -> dict:
    """Every level in turn, the users spread over `hosts` (None: the default server); the result says how many users
    the servers hold under the first-token target."""
    with ExitStack() as opened:
        # one connection per simulated user, or the higher levels would measure the client's queue, not the server
        servers = [opened.enter_context(Ollama(h, timeout=plan.timeout, connect=5.0, connections=max(plan.users))) for h in hosts]
        versions = []
        for server in servers:
            version = server.version()
            if version is None:
                raise OrchError(f"no Ollama answered at {server.url}: {START_IT}")
            versions.append(version)
            served = server.models()
            if served and not names.is_served(plan.model, served):
                raise OrchError(names.not_served(plan.model, served, server.url))
            with reporter.task(f"loading the model at {server.url}" if len(servers) > 1 else "loading the model"):
                # kept out of the figures: the first level would count the load
                warm = chat_once(server, BenchPlan(plan.model, (1,), 1, 1, plan.timeout), [{"role": "user", "content": "你好"}])
            if warm.error:
                raise OrchError(f"{plan.model} did not answer at {server.url} ({warm.error}): check the name with orch health")
        levels: list[Level] = []
        for users in plan.users:
            if stop is not None and stop.is_set():
                break
            with reporter.task(f"{users} concurrent {plural(users, 'user')}", total=None):
                levels.append(run_level(servers, plan, users))
    holds = [lv.users for lv in levels if lv.meets(plan.ttft_target)]
    most = max(holds) if holds else 0
    return {"host": servers[0].url, "hosts": [s.url for s in servers], "server_version": versions[0], "model": plan.model,
            "plan": asdict(plan), "levels": [asdict(lv) | {"meets_target": lv.meets(plan.ttft_target)} for lv in levels],
            "holds_users": most, "recommendation": _recommend(levels, most, plan.ttft_target)}


def _recommend(levels: list[Level], most: int, target: float) -> str:
    if not levels:
        return "no level ran"
    if most == 0:
        return (f"even one user waits longer than {target:g} s for the first token (p95) or sees errors: use a smaller quant, "
                "a GPU, or a longer --ttft-target")
    best = next(lv for lv in levels if lv.users == most)
    tried_more = [lv.users for lv in levels if lv.users > most]
    tail = (f"; at {tried_more[0]} users the p95 first token passes {target:g} s" if tried_more
            else "; try higher --users to find the limit")
    return (f"holds {most} concurrent {plural(most, 'user')} with p95 first token {best.ttft_p95:.2f} s <= {target:g} s "
            f"({best.tokens_per_s_total:.1f} tokens/s in total): set OLLAMA_NUM_PARALLEL={most}, so that each of them "
            f"has a slot and requests beyond them queue{tail}")


def plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
