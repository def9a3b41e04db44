"""The web app served beyond localhost: only the given models, no file-system probing, one-line error logs
(issue 39)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("gradio")

from llm4gen import app as webapp  # noqa: E402


@pytest.fixture(scope="module")
def loaded(tiny_sd_dir):
    return webapp.load_model(tiny_sd_dir)


def test_exposed_means_another_host_or_a_share_link():
    assert not webapp.is_exposed("127.0.0.1", False) and not webapp.is_exposed("localhost", False)
    assert webapp.is_exposed("0.0.0.0", False) and webapp.is_exposed("192.168.1.5", False)
    assert webapp.is_exposed("127.0.0.1", True)


def test_a_limited_manager_gives_one_answer_for_any_other_ref(loaded, tiny_sd_dir, tmp_path):
    manager = webapp.ModelManager(allowed=(loaded.ref,))
    manager.add(loaded)
    assert manager.get(loaded.ref) is loaded
    (tmp_path / "a_file.txt").write_text("x")
    answers = set()
    for probe in [str(tmp_path / "missing"), str(tmp_path), str(tmp_path / "a_file.txt"), "/etc", "org/some-model",
                  tiny_sd_dir + "/"]:  # even a loadable folder: it was not given
        with pytest.raises(ValueError, match="serves only the models it was started with") as info:
            manager.get(probe)
        answers.add(str(info.value))
    assert len(answers) == 1 and str(tmp_path) not in answers.pop()


def test_exposed_page_limits_the_picker_and_logs_errors_in_one_line(loaded, tmp_path, caplog, capfd):
    from gradio_client import Client

    demo, url = webapp.launch(loaded, host="0.0.0.0", block=False, default_steps=2)
    try:
        box = next(c["props"] for c in demo.config["components"] if c["props"].get("elem_id") == "model")
        assert box["allow_custom_value"] is False and [tuple(c) for c in box["choices"]] == [(loaded.ref, loaded.ref)]
        client = Client(url.replace("0.0.0.0", "127.0.0.1"), verbose=False, download_files=str(tmp_path))
        (tmp_path / "a_file.txt").write_text("x")
        answers = set()
        for probe in [str(tmp_path / "missing"), str(tmp_path / "a_file.txt")]:  # refused by the box or the manager
            capfd.readouterr()
            with caplog.at_level(logging.WARNING, logger="llm4gen.app"):
                with pytest.raises(Exception, match="serves only the models") as info:
                    client.predict(probe, "a red cube", "", 2, 7.5, 0, 1, "", api_name="/run")
            answers.add(str(info.value))
            # a crafted call past the locked box: one log line, no traceback (gradio's own check would print one)
            assert "Traceback" not in capfd.readouterr().err
        assert len(answers) == 1
        answer = answers.pop()
        assert "does not exist" not in answer and str(tmp_path) not in answer
        caplog.clear()
        capfd.readouterr()
        with caplog.at_level(logging.WARNING, logger="llm4gen.app"):
            with pytest.raises(Exception, match="prompt is empty"):
                client.predict(loaded.ref, " ", "", 2, 7.5, 0, 1, "", api_name="/run")
        logged = [r.getMessage() for r in caplog.records if r.name == "llm4gen.app"]
        assert len(logged) == 1 and "\n" not in logged[0] and "prompt is empty" in logged[0]
        assert "Traceback" not in capfd.readouterr().err
    finally:
        demo.close()


def test_local_page_still_loads_any_model(loaded, tiny_sd_dir):
    demo = webapp.build_app(loaded)
    box = next(c["props"] for c in demo.config["components"] if c["props"].get("elem_id") == "model")
    assert box["allow_custom_value"] is True
