"""Chat templates that cannot hurt: sandbox escapes, endless loops, huge strings, recursion,
templates that raise; each a one-line error naming the model file, and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid

import psutil
import pytest

from slmrun.chat import render_template
from slmrun.errors import (ChatFormatError, ChatTemplateError, TemplateMemoryError, TemplateOutputError,
                           TemplateTimeoutError)
from slmrun.template_sandbox import ChatTemplate, TemplateSandbox, output_limit

from conftest import slmrun_cmd
from tinymodels import CHATML, write_tiny_gguf

Q = [{"role": "user", "content": "What is 2+2?"}]
VARS = {"messages": Q, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}
LIMIT = output_limit(512, 100)

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch {canary}') }}",
    "{{ joiner.__init__.__globals__['os'].popen('touch {canary}').read() }}",
    "{{ lipsum.__globals__['os'].system('touch {canary}') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch {canary}') }}",
    "{{ self._TemplateReference__context.parent }}",
    "{% set x = messages.append({'role': 'user', 'content': 'injected'}) %}",  # the immutable sandbox
    "{{ messages[0].update({'content': 'x'}) }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
]
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE_STRING = "{{ ('x' * 100000) * 100000 }}"  # the 100 kB string repeated 100,000 times
GROWING_STRING = ("{% set ns = namespace(s='x' * 10000) %}{% for i in range(100000) %}"
                  "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}")
STREAMED_FLOOD = "{% for i in range(100000) %}{{ 'y' * 10000 }}{% endfor %}"
ENDLESS_MACRO = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
EXPONENTIAL_MACRO = ("{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
                     "{{ f(0) }}")
STUCK_IN_C = "{% set x = 7 ** 10000000 %}{{ x }}"  # one C call of ~20 s: SIGALRM cannot interrupt it
RAISES = ("{% for m in messages %}{% if m['role'] == 'user' and loop.index0 % 2 %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{{ m['content'] }}{% endfor %}")


@pytest.fixture
def box():
    sandbox = TemplateSandbox(timeout=0.5)
    yield sandbox
    pid = sandbox.pid
    sandbox.close()
    assert pid is None or not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _one_line(exc: BaseException, origin: str) -> str:
    text = str(exc)
    assert "\n" not in text and text.startswith(f"{origin}: its chat template"), text
    return text


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_are_stopped(box, template, tmp_path):
    canary = tmp_path / "escaped"
    with pytest.raises(ChatTemplateError) as exc:
        box.render(template.replace("{canary}", str(canary)), VARS, limit=LIMIT, origin="evil.gguf")
    assert "tried something unsafe" in _one_line(exc.value, "evil.gguf")
    assert not canary.exists()  # no command ran
    assert box.render("{{ messages[0]['content'] }}", VARS, limit=LIMIT) == "What is 2+2?"
    assert box.render("{{ messages.__class__ }}", VARS, limit=LIMIT) == ""  # a blocked name prints nothing


def test_endless_loops_are_stopped_by_the_workers_own_deadline(box):
    box.render("{{ 1 }}", VARS, limit=LIMIT)
    pid = box.pid
    for template in (NESTED_LOOPS, EXPONENTIAL_MACRO):
        with pytest.raises(TemplateTimeoutError) as exc:
            box.render(template, VARS, limit=LIMIT, origin="loops.gguf")
        assert "was still rendering after 0.5 s and was stopped" in _one_line(exc.value, "loops.gguf")
        assert isinstance(exc.value, TimeoutError) and isinstance(exc.value, ChatFormatError)
    assert box.pid == pid and _alive(pid)  # interrupted, not killed: the worker stays warm
    assert box.render("{{ 2 }}", VARS, limit=LIMIT) == "2"


def test_a_render_stuck_in_c_code_is_killed_and_the_worker_replaced(box):
    box.render("{{ 1 }}", VARS, limit=LIMIT)
    pid = box.pid
    with pytest.raises(TemplateTimeoutError) as exc:
        box.render(STUCK_IN_C, VARS, limit=LIMIT, origin="stuck.gguf")
    _one_line(exc.value, "stuck.gguf")
    assert box.pid is None and not _alive(pid)  # killed and reaped
    assert box.render("{{ 3 }}", VARS, limit=LIMIT) == "3" and box.pid != pid


def test_huge_strings_are_refused_before_they_are_built(box):
    with pytest.raises(TemplateOutputError) as exc:
        box.render(HUGE_STRING, VARS, limit=LIMIT, origin="big.gguf")
    assert f"wrote more than {LIMIT} bytes" in _one_line(exc.value, "big.gguf")
    with pytest.raises(TemplateOutputError):  # counted while it streams
        box.render(STREAMED_FLOOD, VARS, limit=LIMIT, origin="big.gguf")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS bounds memory on Linux only")
def test_a_string_that_keeps_doubling_hits_the_memory_cap(box):
    pid = None
    box.timeout = 10.0  # the memory cap must be what stops it, even on a loaded machine
    with pytest.raises(TemplateMemoryError) as exc:
        box.render("{{ 1 }}", VARS, limit=LIMIT)
        pid = box.pid
        box.render(GROWING_STRING, VARS, limit=LIMIT, origin="hungry.gguf")
    assert "needed more than 256 MiB of memory" in _one_line(exc.value, "hungry.gguf")
    assert isinstance(exc.value, MemoryError)
    assert psutil.Process(pid).memory_info().rss < 128 << 20  # and it gave the memory back
    assert box.render("{{ 4 }}", VARS, limit=LIMIT) == "4"


def test_recursion_via_macros_and_a_template_that_raises(box):
    with pytest.raises(ChatTemplateError) as exc:
        box.render(ENDLESS_MACRO, VARS, limit=LIMIT, origin="deep.gguf")
    assert "failed: it recursed too deeply" in _one_line(exc.value, "deep.gguf")
    two = dict(VARS, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ChatTemplateError) as exc:
        box.render(RAISES, two, limit=LIMIT, origin="strict.gguf")
    assert _one_line(exc.value, "strict.gguf") == (
        "strict.gguf: its chat template refused the conversation: "
        "Conversation roles must alternate user/assistant/user/assistant/...")
    assert box.render(RAISES, VARS, limit=LIMIT) == "What is 2+2?"
    with pytest.raises(ChatTemplateError, match="does not compile: .*line 1"):
        box.render("{% for %}", VARS, limit=LIMIT, origin="broken.gguf")


def test_a_worker_killed_from_outside_is_replaced(box):
    box.render("{{ 1 }}", VARS, limit=LIMIT)
    pid = box.pid
    psutil.Process(pid).kill()
    psutil.Process(pid).wait(5)
    assert box.render("{{ messages | length }}", VARS, limit=LIMIT) == "1"
    assert box.pid != pid


def test_renders_from_many_threads_each_get_their_own_answer(box):
    results, errors = {}, []

    def work(i: int) -> None:
        try:
            for j in range(20):
                v = dict(VARS, messages=[{"role": "user", "content": f"{i}-{j}"}])
                results[(i, j)] = box.render("{{ messages[0]['content'] }}", v, limit=LIMIT)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(results[k] == f"{k[0]}-{k[1]}" for k in results) and len(results) == 80


def test_the_public_render_names_the_model_file_and_bounds_the_output():
    template = ChatTemplate(HUGE_STRING, origin="model.gguf", n_ctx=2048)
    with pytest.raises(TemplateOutputError) as exc:
        render_template(template, Q)
    assert f"more than {output_limit(2048, len(Q[0]['content']))} bytes" in _one_line(exc.value, "model.gguf")
    assert render_template(ChatTemplate(CHATML, origin="m.gguf"), Q) == \
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def _workers_marked(mark: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("_template_worker" in part for part in p.info["cmdline"] or ()) and \
                    p.environ().get("SLMRUN_TEST_MARK") == mark:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.parametrize("template, code", [(NESTED_LOOPS, 14), (GROWING_STRING, 14), (ESCAPES[1], 14)])
def test_cli_with_a_hostile_template_fails_in_one_line_and_leaves_nothing_running(tmp_path, template, code):
    model = write_tiny_gguf(tmp_path / "evil.gguf", chat_template=template)
    mark = uuid.uuid4().hex
    p = subprocess.run([*slmrun_cmd(), "run", "-m", str(model), "-n", "2", "hello"], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, SLMRUN_TEST_MARK=mark))
    assert p.returncode == code
    first = p.stderr.splitlines()[0]
    assert first.startswith("Error: evil.gguf: its chat template ") and "stopped" in first
    assert p.stderr.count("\n") == 2  # the error and its hint
    left = _workers_marked(mark)
    for proc in left:  # an exiting worker may need a moment; it must not linger
        proc.wait(5)
    assert not [proc for proc in left if _alive(proc.pid)]


def test_templates_cannot_read_files(box):
    for template in ('{% include "/etc/passwd" %}', '{% import "/etc/hostname" as h %}', '{% extends "/etc/passwd" %}'):
        with pytest.raises(ChatTemplateError, match="no loader"):
            box.render(template, VARS, limit=LIMIT, origin="nosy.gguf")


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM to interrupt the test itself")
def test_ctrl_c_during_a_render_does_not_leave_its_answer_for_the_next(box):
    box.timeout = 5.0

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            box.render(NESTED_LOOPS, VARS, limit=LIMIT)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert box.pid is None  # the interrupted worker was stopped
    assert box.render("{{ 5 }}", VARS, limit=LIMIT) == "5"
