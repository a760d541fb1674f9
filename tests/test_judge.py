"""The LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest

from recipe.data.tokenizer import train_bpe_tokenizer
from recipe.errors import RecipeConfigError
from recipe.evaluation.completions import SamplingConfig
from recipe.evaluation.evaluate_model import evaluate_model, write_results
from recipe.evaluation.judge import LLMJudge, parse_scores
from recipe.model.presets import build_model, build_model_config
from recipe.options.arguments import ModelArguments
from tests.conftest import read_stories

ANSWERS = [
    'Here is my grade:\n```json\n{"grammar": 8, "creativity": 6, "consistency": 7, "plot": 5}\n```',
    'Scores: {"Grammar": "6/10", "Creativity": 4, "Consistency": 9.0, "Plot": "7"}',
    "I would rather not grade this story.",
]


class FakeChatServer:
    """Answers POST /v1/chat/completions with the next canned answer and records each request body."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                answer = server.answers[(len(server.requests) - 1) % len(server.answers)]
                payload = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", ""),
                        "system_fingerprint": "",
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "logprobs": None,
                                "message": {"role": "assistant", "content": answer},
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def fake_server(monkeypatch):
    # The tests run with HF_HUB_OFFLINE=1, which blocks every huggingface_hub request, even to 127.0.0.1.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = FakeChatServer(list(ANSWERS))
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_judge_scores_are_parsed_and_averaged_over_answered_samples(fake_server):
    samples = [{"prompt": "Once upon a time, a brave knight", "completion": f" rode away {i}."} for i in range(3)]
    judge = LLMJudge(model="story-judge", base_url=fake_server.url)
    graded = judge.grade(samples)
    assert graded["model"] == "story-judge"
    assert graded["scores"] == {"grammar": 7.0, "creativity": 5.0, "consistency": 8.0, "plot": 6.0}
    assert "error" in graded["per_sample"][2] and graded["per_sample"][0]["plot"] == 5.0
    assert len(fake_server.requests) == 3
    request = fake_server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["model"] == "story-judge"
    content = request["messages"][0]["content"]
    assert "Once upon a time, a brave knight*** rode away 0." in content


def test_judge_that_never_answers_with_scores_fails_clearly(fake_server):
    fake_server.answers = ["No."]
    with pytest.raises(RuntimeError, match="no usable scores"):
        LLMJudge(base_url=fake_server.url + "/v1").grade([{"prompt": "Once", "completion": " upon"}])


def test_parse_scores_reads_json_or_labelled_lines_and_rejects_bad_values():
    assert parse_scores("Grammar: 9\nCreativity - 3\nConsistency: 6.5\nPlot: 4") == {
        "grammar": 9.0,
        "creativity": 3.0,
        "consistency": 6.5,
        "plot": 4.0,
    }
    with pytest.raises(ValueError, match="outside 0..10"):
        parse_scores('{"grammar": 12, "creativity": 3, "consistency": 6, "plot": 4}')
    with pytest.raises(ValueError, match="plot"):
        parse_scores('{"grammar": 2, "creativity": 3, "consistency": 6}')
    with pytest.raises(RecipeConfigError, match="judge_model"):
        LLMJudge()


def test_evaluate_model_with_judge_writes_per_sample_scores(fake_server, stories_dir, tmp_path):
    tokenizer = train_bpe_tokenizer(iter(read_stories(stories_dir / "train.txt")), 300)
    tokenizer.pad_token = None  # like GPT-2's: generation borrows EOS for padding and gives it back
    args = ModelArguments(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1)
    args.num_key_value_heads, args.head_dim = 1, 32
    model = build_model(build_model_config(args, tokenizer))
    results = evaluate_model(
        model,
        tokenizer,
        prompts=["Once upon a time, a brave knight"],
        sampling=SamplingConfig(num_samples=3, max_new_tokens=6),
        judge=LLMJudge(base_url=fake_server.url),
        model_name="random-tiny",
    )
    assert tokenizer.pad_token is None
    assert results["judge"]["scores"]["grammar"] == 7.0 and results["heldout"] is None
    write_results(results, tmp_path)
    completions = json.loads((tmp_path / "completions.json").read_text())
    assert [c["judge"].get("grammar") for c in completions] == [8.0, 6.0, None]
    assert "judge grammar 8" in (tmp_path / "completions.md").read_text()
