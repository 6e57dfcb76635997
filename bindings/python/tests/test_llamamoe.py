"""Tests of the llamamoe Python bindings on stories260K (converted here with llamamoe-convert).

Environment:
    LLAMAMOE_LIBRARY      the built libllamamoe shared library
    LLAMAMOE_TEST_MODELS  folder with stories260K.bin, tok512.bin, stories260K-reference.json
    LLAMAMOE_CONVERT      the llamamoe-convert tool
Missing ones skip the tests, except under CI=true, where they fail.
"""

import gc
import json
import os
import shutil
import subprocess
import tempfile
import unittest

IN_CI = os.environ.get("CI") == "true"

import llamamoe  # importing never needs the shared library; it is loaded on first use


def _missing(what):
    """Fails under CI=true, else skips."""
    if IN_CI:
        raise AssertionError("CI=true and %s" % what)
    raise unittest.SkipTest(what)


_setup = {}


def _convert(argv):
    """Runs llamamoe-convert quietly; its output is shown only if it fails."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise AssertionError("%s exited with %d:\n%s" % (" ".join(argv), p.returncode,
                                                          p.stdout.decode(errors="replace")))


def setUpModule():
    models = os.environ.get("LLAMAMOE_TEST_MODELS")
    convert = os.environ.get("LLAMAMOE_CONVERT")
    if not models or not convert:
        _missing("LLAMAMOE_TEST_MODELS or LLAMAMOE_CONVERT is not set")
    needed = ["stories260K.bin", "tok512.bin", "stories260K-reference.json"]
    absent = [n for n in needed if not os.path.isfile(os.path.join(models, n))]
    if absent:
        _missing("missing in %s: %s" % (models, ", ".join(absent)))
    try:
        llamamoe.version()
    except llamamoe.LibraryNotFoundError as e:
        _missing(str(e))
    tmp = tempfile.mkdtemp(prefix="llamamoe-py-")
    _setup["tmp"] = tmp
    gguf = os.path.join(tmp, "stories260K.gguf")
    _convert([convert, "llama2c", os.path.join(models, "stories260K.bin"),
              os.path.join(models, "tok512.bin"), "-o", gguf])
    moe = os.path.join(tmp, "stories260K-moe.gguf")
    _convert([convert, "moefy", gguf, "-o", moe, "--experts", "4", "--top-k", "2"])
    with open(os.path.join(models, "stories260K-reference.json"), encoding="utf-8") as f:
        runs = json.load(f)
    _setup.update(gguf=gguf, moe=moe, runs=runs)


def tearDownModule():
    gc.collect()
    if "tmp" in _setup:
        shutil.rmtree(_setup["tmp"], ignore_errors=True)


def _run(name_prefix):
    for r in _setup["runs"]:
        if r["name"].startswith(name_prefix):
            return r
    raise AssertionError("no reference run named %r..." % name_prefix)


def _expected(run):
    """run.c's stdout without its final newline, and the number of tokens it generated."""
    text = run["stdout"]
    assert text.endswith("\n")
    return text[:-1], len(run["ids"]) - len(run["prompt_ids"])


class TestModel(unittest.TestCase):
    def setUp(self):
        self.model = llamamoe.Model(_setup["gguf"])

    def tearDown(self):
        self.model.close()

    def test_info(self):
        m = self.model
        self.assertEqual(m.architecture, "llama")
        self.assertEqual((m.n_vocab, m.n_ctx_train, m.n_layer, m.n_embd), (512, 512, 5, 64))
        self.assertEqual((m.n_expert, m.n_expert_used), (0, 0))
        self.assertEqual(m.n_params, 260032)
        self.assertTrue(m.has_weights)
        self.assertIsInstance(m.name, str)
        self.assertEqual(m.info["n_head_kv"], 4)
        self.assertEqual(m.bos, 1)
        self.assertEqual(m.eos, 2)
        # the library wrote exactly our struct: the layouts agree in size
        self.assertEqual(m._info.struct_size, llamamoe._lib.ctypes.sizeof(llamamoe._lib.ModelInfo))

    def test_meta(self):
        self.assertEqual(self.model.meta("general.architecture"), "llama")
        self.assertEqual(self.model.meta("llamamoe.stop_on_bos"), "true")
        self.assertTrue(self.model.stop_on_bos)
        self.assertEqual(self.model.meta("no.such.key", "absent"), "absent")
        with self.assertRaises(llamamoe.Error) as cm:
            self.model.meta("no.such.key")
        self.assertEqual(cm.exception.status, 1)

    def test_tokenize_round_trip(self):
        for run in _setup["runs"]:
            if run["prompt"]:
                self.assertEqual(self.model.tokenize(run["prompt"]), run["prompt_ids"], run["name"])
        sentence = "Lily and Tom went to the park. They saw a big café!"
        ids = self.model.tokenize(sentence)
        self.assertEqual(ids[0], self.model.bos)
        self.assertEqual(self.model.tokenize(sentence, add_bos=False), ids[1:])
        self.assertEqual(self.model.detokenize(ids), sentence)
        emoji = "Sam saw a \U0001f436 dog"  # byte-fallback tokens
        self.assertEqual(self.model.detokenize(self.model.tokenize(emoji)), emoji)
        self.assertEqual(self.model.tokenize(""), [self.model.bos])
        self.assertEqual(self.model.token_to_piece(self.model.bos), b"")

    def test_missing_file(self):
        path = os.path.join(_setup["tmp"], "no", "such", "model.gguf")
        with self.assertRaises(llamamoe.Error) as cm:
            llamamoe.Model(path)
        e = cm.exception
        self.assertIsInstance(e, RuntimeError)
        self.assertNotEqual(e.status, 0)
        self.assertIn(path, str(e))
        self.assertIn(path, e.message)
        self.assertEqual(e.status_name, llamamoe.status_string(e.status))

    def test_bad_file(self):
        path = os.path.join(_setup["tmp"], "garbage.gguf")
        with open(path, "wb") as f:
            f.write(b"not a gguf file at all" * 10)
        with self.assertRaises(llamamoe.Error) as cm:
            llamamoe.Model(path)
        self.assertNotEqual(cm.exception.status, 0)

    def test_context_manager_closes(self):
        with llamamoe.Model(_setup["gguf"]) as m:
            with llamamoe.Context(m, n_ctx=64) as ctx:
                ctx.eval(m.tokenize("Once"))
                self.assertEqual(ctx.n_tokens, 2)
            self.assertTrue(ctx.closed)
            with self.assertRaises(llamamoe.Error):
                ctx.eval([1])
            ctx2 = llamamoe.Context(m, n_ctx=64)
        self.assertTrue(m.closed)
        self.assertTrue(ctx2.closed)  # closing the model closed its context first
        with self.assertRaises(llamamoe.Error):
            m.tokenize("x")
        m.close()  # idempotent


class TestContext(unittest.TestCase):
    def setUp(self):
        self.model = llamamoe.Model(_setup["gguf"])
        self.ctx = llamamoe.Context(self.model, n_threads=1)

    def tearDown(self):
        self.ctx.close()
        self.model.close()

    def test_greedy_matches_reference(self):
        want, n_generated = _expected(_run("greedy, no prompt"))
        self.assertEqual(n_generated, 256)
        gen = self.ctx.generate("", max_tokens=256, temperature=0)
        pieces = list(gen)
        self.assertTrue(all(isinstance(p, str) and p for p in pieces))
        self.assertEqual("".join(pieces), want)
        self.assertEqual(gen.stop_reason, llamamoe.STOP_MAX_TOKENS)
        self.assertEqual(len(gen.tokens), 256)
        self.assertEqual([1] + gen.tokens, _run("greedy, no prompt")["ids"])
        self.assertEqual(self.ctx.n_tokens, 256)  # BOS + 255 (the last one is not evaluated)

    def test_prompt_runs_and_stop_on_bos(self):
        for prefix in ("greedy, prompt 1", "greedy, prompt 3", "greedy, prompt 5"):
            run = _run(prefix)
            self.ctx.reset()
            gen = self.ctx.generate(run["prompt"], max_tokens=256 + 1 - len(run["prompt_ids"]),
                                    temperature=0)
            text = gen.text()
            self.assertEqual(run["prompt_ids"] + gen.tokens, run["ids"], prefix)
            self.assertEqual(run["prompt"] + text, run["stdout"][:-1], prefix)
            want = llamamoe.STOP_BOS if run["stopped_on_bos"] else llamamoe.STOP_MAX_TOKENS
            self.assertEqual(gen.stop_reason, want, prefix)

    def test_emoji_prompt_utf8(self):
        run = _run("greedy, prompt 4")
        gen = self.ctx.generate(run["prompt"], max_tokens=20, temperature=0)
        text = gen.text()
        self.assertEqual(self.model.detokenize(run["prompt_ids"] + gen.tokens),
                         run["prompt"] + text)

    def test_python_loop_equals_lmoe_generate(self):
        kwargs = dict(max_tokens=100, temperature=0.8, top_p=0.95, seed=1234)
        text = "".join(self.ctx.generate("Tim had", **kwargs))
        self.ctx.reset()
        streamed = []
        done = self.ctx.generate_text("Tim had", on_text=streamed.append, **kwargs)
        self.assertEqual(done.text, text)
        self.assertEqual("".join(streamed), text)
        self.assertEqual(done.n_generated, len(done.tokens))
        self.assertIn(done.stop_reason, (llamamoe.STOP_MAX_TOKENS, llamamoe.STOP_EOS,
                                         llamamoe.STOP_BOS))

    def test_sampled_reproducible(self):
        outs = []
        for _ in range(2):
            self.ctx.reset()
            gen = self.ctx.generate("", max_tokens=128, temperature=1.0, top_p=0.9, seed=133742)
            outs.append((gen.text(), list(gen.tokens)))
        self.assertEqual(outs[0], outs[1])
        self.ctx.reset()
        other = self.ctx.generate("", max_tokens=128, temperature=1.0, top_p=0.9, seed=7)
        self.assertNotEqual(other.text(), outs[0][0])

    def test_sampled_matches_reference(self):
        run = _run("sampled")
        want, n_generated = _expected(run)
        gen = self.ctx.generate("", max_tokens=n_generated, temperature=1.0, top_p=0.9,
                                seed=133742)
        self.assertEqual(gen.text(), want)

    def test_stop_strings(self):
        full = "".join(self.ctx.generate("", max_tokens=256, temperature=0))
        stop = "Lily."
        self.assertIn(stop, full)
        self.ctx.reset()
        gen = self.ctx.generate("", max_tokens=256, temperature=0, stop=[stop, "never"])
        self.assertEqual(gen.text(), full[:full.index(stop)])
        self.assertEqual(gen.stop_reason, llamamoe.STOP_STRING)
        self.ctx.reset()
        done = self.ctx.generate_text("", max_tokens=256, temperature=0, stop=[stop])
        self.assertEqual(done.text, full[:full.index(stop)])

    def test_invalid_parameters(self):
        with self.assertRaises(llamamoe.Error) as cm:
            self.ctx.generate("Once", temperature=-1)  # raised at the call, not at next()
        self.assertEqual(cm.exception.status, 1)
        self.assertIn("temperature", str(cm.exception))
        with self.assertRaises(llamamoe.Error):
            self.ctx.generate("Once", top_p=0)
        with self.assertRaises(llamamoe.Error):
            self.ctx.generate("Once", max_tokens=-1)
        with self.assertRaises(llamamoe.Error):
            self.ctx.generate_text("Once", temperature=-1)
        with self.assertRaises(llamamoe.Error) as cm:
            self.ctx.eval([100000])  # outside the vocabulary
        self.assertEqual(cm.exception.status, 1)
        self.assertEqual(self.ctx.n_tokens, 0)

    def test_eval_logits_reset(self):
        with self.assertRaises(llamamoe.Error):
            self.ctx.logits()  # nothing evaluated yet
        ids = self.model.tokenize("Once upon a time")
        self.ctx.eval(ids)
        self.assertEqual(self.ctx.n_tokens, len(ids))
        logits = self.ctx.logits()
        self.assertEqual(len(logits), self.model.n_vocab)
        self.assertTrue(all(isinstance(x, float) for x in logits))
        greedy = max(range(len(logits)), key=lambda i: (logits[i], -i))
        with llamamoe.Sampler(temperature=0) as s:
            self.assertEqual(s.sample(self.ctx), greedy)
            self.assertEqual(s.sample(logits), greedy)
        # one batch equals one token at a time
        self.ctx.reset()
        self.assertEqual(self.ctx.n_tokens, 0)
        for t in ids:
            self.ctx.eval([t])
        for a, b in zip(logits, self.ctx.logits()):
            self.assertAlmostEqual(a, b, places=4)

    def test_context_full(self):
        with llamamoe.Context(self.model, n_ctx=8, n_threads=1) as small:
            self.assertEqual(small.n_ctx, 8)
            with self.assertRaises(llamamoe.Error) as cm:
                small.eval(list(range(3, 12)))
            self.assertEqual(cm.exception.status, 6)
            with self.assertRaises(llamamoe.Error) as cm:
                list(small.generate("", max_tokens=20, temperature=0))
            self.assertEqual(cm.exception.status, 6)

    def test_dense_expert_counts(self):
        with self.assertRaises(llamamoe.Error) as cm:
            self.ctx.expert_counts()
        self.assertEqual(cm.exception.status, 8)

    def test_abort(self):
        with llamamoe.Context(self.model, n_threads=1, abort_fn=lambda: True) as ctx:
            with self.assertRaises(llamamoe.Error) as cm:
                ctx.eval([1, 2, 3])
            self.assertEqual(cm.exception.status, 9)
            self.assertEqual(ctx.n_tokens, 0)


class TestMoE(unittest.TestCase):
    def test_expert_counts_and_routing(self):
        decisions = []
        with llamamoe.Model(_setup["moe"]) as m:
            self.assertEqual((m.n_expert, m.n_expert_used), (4, 2))
            with llamamoe.Context(m, n_threads=2,
                                  routing_fn=lambda *d: decisions.append(d)) as ctx:
                ids = m.tokenize("Once upon a time")
                ctx.eval(ids)
                counts = ctx.expert_counts()
                self.assertEqual(len(counts), m.n_layer)
                for layer in counts:
                    self.assertEqual(len(layer), 4)
                    self.assertEqual(sum(layer), len(ids) * 2)
                self.assertEqual(len(decisions), m.n_layer * len(ids))
                from_callback = [[0] * 4 for _ in range(m.n_layer)]
                for layer, pos, experts, weights in decisions:
                    self.assertEqual(len(experts), 2)
                    self.assertEqual(len(weights), 2)
                    for e in experts:
                        from_callback[layer][e] += 1
                self.assertEqual(from_callback, counts)
                ctx.reset_expert_counts()
                self.assertEqual(ctx.expert_counts(), [[0] * 4] * m.n_layer)
                self.assertEqual(ctx.n_tokens, len(ids))


if __name__ == "__main__":
    unittest.main()
