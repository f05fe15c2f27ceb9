"""Continuous batching with a personality per row (pkt.rows, pkt.serve.batcher), on the tiny
model: a row's answer in a mixed batch is its answer alone, token for token; rows join while
others decode and leave when cancelled without changing the others."""

import threading
import time

import pytest
import torch

import pkt
from pkt.generation import GenConfig, chat_prompt, generate
from pkt.models import TinyRandomModel
from pkt.serve.batcher import Batcher, QueueFull, Row
from pkt.serve.engine import Sampling
from pkt.serve.rowcache import RowCache

QS = ["What do you do on a free evening?", "Describe your ideal holiday in detail.", "Hi",
      "How do you handle conflict at work?"]
# (profile, method, params): every kind of edit a row can carry
SPECS = [(None, "neuron", {}),
         ("extraversion:high:2", "neuron", {}),
         ("extraversion:low:1.5", "neuron", {"include_prompt": True}),
         ("openness:low:1.5", "actadd", {}),
         ("openness:high", "actadd", {"include_prompt": True}),
         ("extraversion:high:1.2+openness:low", "neuron", {}),
         ("openness:high", "prompt_p2", {}),
         ("openness:high:2", "dpn", {}),
         ("openness:low:1+extraversion:high:1", "actadd", {})]


@pytest.fixture(scope="module")
def lm64(tmp_path_factory, one_thread):
    lm = TinyRandomModel().load()
    lm.model.to(torch.float64)
    cache = tmp_path_factory.mktemp("cache")
    pers = []
    for prof, method, params in SPECS:
        kw = {"search_gen": {"max_new_tokens": 8}} if method == "neuron" else {}
        pers.append(pkt.personality(lm, prof, method, cache=cache, n_search=4, **kw, **params))
    return lm, pers


def prompt_ids(lm, text: str) -> list[int]:
    return lm.tokenizer(chat_prompt(lm.tokenizer, text), add_special_tokens=False)["input_ids"]


class Collect:
    """A row's events."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, ev):
        self.events.append(ev)
        if ev[0] in ("done", "error"):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e[1] for e in self.events if e[0] == "delta")

    @property
    def out(self):
        assert self.events[-1][0] == "done", self.events[-1]
        return self.events[-1][1]


def run(lm, jobs, max_rows: int, gap: float = 0.0, steps: list | None = None,
        prompt_cache: int = 0, figures: list | None = None) -> list[Collect]:
    """``jobs``: (personality, prompt ids, Sampling); all submitted, every answer collected
    (``steps`` receives the batch's decode forwards, ``figures`` its figures)."""
    b = Batcher(lm, max_rows=max_rows, max_waiting=1000, prompt_cache_tokens=prompt_cache)
    try:
        got = []
        for p, ids, s in jobs:
            c = Collect()
            b.submit(Row(ids, s, p.row_edit(), c))
            got.append(c)
            time.sleep(gap)
        for c in got:
            assert c.done.wait(120)
        if steps is not None:
            steps.append(b.steps)
        if figures is not None:
            figures.append(b.figures())
        return got
    finally:
        b.stop()


def mixed_jobs(lm, pers):
    jobs = []
    for i, p in enumerate(pers):
        for j, q in enumerate(QS[: 2 + i % 3]):
            s = Sampling(max_tokens=14 + 5 * j, temperature=0.8 if (i + j) % 3 == 0 else 0.0,
                         top_p=0.9 if j == 1 else 1.0, seed=10 * i + j, ignore_eos=j % 2 == 0,
                         repetition_penalty=1.3 if i == 4 else 1.15)
            jobs.append((p, prompt_ids(lm, p.rewrite(q)), s))
    return jobs


def test_mixed_batch_equals_one_at_a_time(lm64):
    """Every row kind (plain, NPTI with and without include_prompt, ActAdd, DPN-LE, NPTI and
    ActAdd profiles, P²), greedy and sampled, in batches of 5 joining at different steps:
    the same tokens and text as one at a time, in float64."""
    lm, pers = lm64
    jobs = mixed_jobs(lm, pers)
    steps = []
    alone = run(lm, jobs, max_rows=1, steps=steps)
    mixed = run(lm, jobs, max_rows=5, gap=0.002, steps=steps)
    assert steps[1] < steps[0] / 2  # rows shared forward passes
    for a, m in zip(alone, mixed):
        assert m.out.token_ids == a.out.token_ids and m.text == a.text
        assert m.out.finish_reason == a.out.finish_reason
    assert len({tuple(a.out.token_ids) for a in alone}) > len(jobs) // 2  # edits differ


def test_the_prompt_cache_changes_no_answer(lm64):
    """With the prompt cache on, newcomers start from an earlier prompt's keys and values
    (the chat template and the instructions they share) and every answer, of every row
    kind, greedy and sampled, is the one computed whole, in float64. Rows whose edit
    includes the prompt never use it."""
    lm, pers = lm64
    jobs = mixed_jobs(lm, pers)
    alone = run(lm, jobs, max_rows=1)
    figs = []
    cached = run(lm, jobs, max_rows=5, gap=0.002, prompt_cache=10_000, figures=figs)
    for a, m in zip(alone, cached):
        assert m.out.token_ids == a.out.token_ids and m.text == a.text
    pc = figs[0]["prompt_cache"]
    plain = [ids for p, ids, _s in jobs if not (p.row_edit() and p.row_edit().include_prompt)]
    assert 0 < pc["hits"] <= len(plain) - 1
    assert pc["reused_tokens"] >= pc["hits"] * 5  # the chat template's system turn at least
    assert run(lm, jobs[:2], max_rows=2, figures=figs) and figs[1]["prompt_cache"] is None


def test_newcomers_that_arrive_together_share_one_prefill(lm64):
    """Requests that arrive while the scheduler is busy are prefilled in one forward pass
    (rows of every kind, some from cached prefixes of different lengths, some editing their
    prompt): the same answers as one at a time, in float64."""
    lm, pers = lm64
    jobs = mixed_jobs(lm, pers)[:8]
    assert any(p.row_edit() is not None and p.row_edit().include_prompt for p, _i, _s in jobs)
    alone = run(lm, jobs, max_rows=1)
    for cache in (0, 10_000):
        b = Batcher(lm, max_rows=8, max_waiting=100, prompt_cache_tokens=cache)
        try:
            got = [Collect()]  # one alone first (its prompt cached), then the others at once
            b.submit(Row(jobs[0][1], jobs[0][2], jobs[0][0].row_edit(), got[0]))
            assert got[0].done.wait(120)
            with b.model_lock:  # the scheduler waits: the requests queue up meanwhile
                for p, ids, s in jobs[1:]:
                    got.append(Collect())
                    b.submit(Row(ids, s, p.row_edit(), got[-1]))
            for c in got:
                assert c.done.wait(120)
            # the first of the others may be taken before the rest; with the cache, rows
            # from a cached prefix and rows that compute their whole prompt (include_prompt)
            # have new parts of different lengths, in separate passes
            assert b.prefills <= (5 if cache else 3)
            plain = [p for p, _i, _s in jobs[1:] if not (p.row_edit() and p.row_edit().include_prompt)]
            assert b.prompts is None if not cache else b.prompts.hits >= len(plain)
        finally:
            b.stop()
        for a, m in zip(alone, got):
            assert m.out.token_ids == a.out.token_ids and m.text == a.text, cache


def test_prefill_passes_group_new_parts_of_similar_length():
    from pkt.serve.prefill import groups

    assert groups([]) == []
    assert groups([17, 20, 150, 5, 30]) == [[3, 0, 1], [4], [2]]  # 5..21 (slack 16), 30, 150
    assert groups([100, 190, 201]) == [[0, 1], [2]]  # within the shortest's own length
    assert groups([3, 3, 3]) == [[0, 1, 2]]


def test_prompt_cache_keeps_the_longest_prefix_within_its_bound(tiny):
    from pkt.serve.rowcache import PromptCache

    def filled(ids):
        one = RowCache(tiny.model)
        with torch.no_grad():
            tiny.model(input_ids=torch.tensor([ids]), cache=one.cache, use_cache=True)
        return one

    pc = PromptCache(max_tokens=12)
    a, b = [1, 2, 3, 4, 5], [1, 2, 3, 9, 9, 9]
    pc.put(a, filled(a))
    pc.put(b, filled(b))
    assert pc.tokens == 11 and len(pc.entries) == 2
    n, kv = pc.longest([1, 2, 3, 4, 7, 7])
    assert n == 4 and torch.equal(kv[0][0], filled(a).layers[0]._k[:1, :, :5])
    assert pc.longest([1, 2, 3, 4, 5])[0] == 4  # the last token is always computed
    assert pc.longest([8, 1])[0] == 0 and pc.hits == 2 and pc.reused == 8
    pc.put(a + [6], filled(a + [6]))  # extends a: replaces it
    assert sorted(map(len, pc.entries)) == [6, 6] and pc.tokens == 12
    pc.put([5, 5, 5], filled([5, 5, 5]))  # past the bound: the least recently used goes
    assert list(pc.entries) == [tuple(a + [6]), (5, 5, 5)] and pc.tokens == 9
    pc.put(list(range(13)), filled(list(range(13))))  # longer than the bound: not kept
    assert pc.tokens == 9


def test_greedy_rows_equal_the_runners_generation(lm64):
    """A greedy row in a mixed batch gives what pkt.generation.generate gives under the
    personality's own hooks (the runner's and the API's path)."""
    lm, pers = lm64
    pairs = [(p, q) for p in pers for q in QS[:2]]
    jobs = [(p, prompt_ids(lm, p.rewrite(q)), Sampling(max_tokens=16)) for p, q in pairs]
    mixed = run(lm, jobs, max_rows=8)
    for (p, q), m in zip(pairs, mixed):
        with p.apply():
            ref = generate(lm.model, lm.tokenizer, [chat_prompt(lm.tokenizer, p.rewrite(q))],
                           GenConfig(16, 1, 1.15), progress=False)[0]
        assert m.out.token_ids[: len(ref.response_ids)] == ref.response_ids


def test_a_row_joins_while_others_decode(lm64):
    lm, pers = lm64
    long = (pers[1], prompt_ids(lm, QS[1]), Sampling(max_tokens=60, ignore_eos=True))
    late = (pers[3], prompt_ids(lm, QS[3]), Sampling(max_tokens=10, ignore_eos=True))
    alone = run(lm, [long, late], max_rows=1)
    b = Batcher(lm, max_rows=4)
    try:
        a, c = Collect(), Collect()
        b.submit(Row(long[1], long[2], long[0].row_edit(), a))
        t0 = time.time()
        while len([e for e in a.events if e[0] == "delta"]) < 10:
            assert time.time() - t0 < 60
            time.sleep(0.001)
        b.submit(Row(late[1], late[2], late[0].row_edit(), c))
        assert c.done.wait(60) and a.done.wait(60)
    finally:
        b.stop()
    assert a.out.token_ids == alone[0].out.token_ids and c.out.token_ids == alone[1].out.token_ids
    # the newcomer finished first: it decoded beside the long row, not after it
    assert c.out.steps == 9 and b.steps < a.out.steps + c.out.steps


def test_a_cancelled_row_leaves_and_the_others_are_unchanged(lm64):
    lm, pers = lm64
    jobs = [(pers[i], prompt_ids(lm, QS[i % 4]), Sampling(max_tokens=30, ignore_eos=True))
            for i in (1, 3, 5)]
    alone = run(lm, jobs, max_rows=1)
    b = Batcher(lm, max_rows=3)
    try:
        got = [Collect() for _ in jobs]
        rows = [Row(ids, s, p.row_edit(), c) for (p, ids, s), c in zip(jobs, got)]
        for r in rows:
            b.submit(r)
        while len(rows[1].out.token_ids) < 5:
            time.sleep(0.001)
        rows[1].cancel.set()
        for c in got:
            assert c.done.wait(60)
    finally:
        b.stop()
    assert got[1].out.finish_reason == "cancelled" and got[1].out.steps < 29
    for k in (0, 2):
        assert got[k].out.token_ids == alone[k].out.token_ids
    assert alone[1].out.token_ids[: len(got[1].out.token_ids)] == got[1].out.token_ids


def test_queue_bound(lm64):
    lm, _ = lm64
    b = Batcher(lm, max_rows=1, max_waiting=2)
    try:
        with b.model_lock:  # the scheduler cannot take anyone while the test holds the model
            got = [Collect() for _ in range(3)]
            for c in got[:2]:
                b.submit(Row(prompt_ids(lm, "Hi"), Sampling(max_tokens=3), None, c))
            time.sleep(0.05)
            # one row may already be taken (waiting for the model); fill the queue
            while len(b.waiting) < 2:
                b.submit(Row(prompt_ids(lm, "Hi"), Sampling(max_tokens=3), None, Collect()))
            with pytest.raises(QueueFull):
                b.submit(Row(prompt_ids(lm, "Hi"), Sampling(max_tokens=3), None, got[2]))
        assert got[0].done.wait(30) and got[1].done.wait(30)
    finally:
        b.stop()


def test_row_cache_joins_and_leaves_right_aligned(tiny):
    """Rows of different lengths share the cache right-aligned; dropping rows cuts the
    slots nobody uses."""
    model = tiny.model
    caches = []
    for n in (3, 5, 2):
        one = RowCache(model)
        ids = torch.arange(1, n + 1).unsqueeze(0)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones(1, n, dtype=torch.long),
                  position_ids=torch.arange(n).unsqueeze(0), cache=one.cache, use_cache=True)
        one.mask = torch.ones(1, n, dtype=torch.long)
        caches.append(one)
    batch = RowCache(model)
    for c in caches:
        batch.admit(c)
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    k0 = batch.layers[0].keys
    assert torch.equal(k0[0, :, 2:], caches[0].layers[0].keys[0])
    assert torch.equal(k0[2, :, 3:], caches[2].layers[0].keys[0])
    assert not k0[0, :, :2].any()
    batch.keep([2, 0])  # the longest row leaves: two slots are nobody's any more
    assert batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert torch.equal(batch.layers[0].keys[1], caches[0].layers[0].keys[0])
    assert torch.equal(batch.layers[0].keys[0, :, 1:], caches[2].layers[0].keys[0])
