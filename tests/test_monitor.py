"""`pillsnap.monitor` end to end: a real tiny training run under the monitor watched in headless Chromium (Debian's
`chromium` + `chromium-driver`, driven by Selenium), the token refused over HTTP and WebSocket, a crash shown with its
exit code; and, without a browser, the terminal-line handling and the JSONL tailing."""
import json, os, re, subprocess, sys, threading, time, urllib.error, urllib.request
from pathlib import Path
import pytest
from pillsnap.monitor import JsonlTail, LineBuffer, MetricsState

CHROMIUM, CHROMEDRIVER = Path('/usr/bin/chromium'), Path('/usr/bin/chromedriver')
REPORTS = Path(__file__).resolve().parent.parent/'reports'
TRAIN = '''
import sys
from pillsnap.train import train
train(sys.argv[1], target='classifier', epochs=3, out=sys.argv[2], classifier_kw=dict(max_steps=3))
'''


# ---------------------------------------------------------------- without a browser

def test_terminal_lines_ansi_and_carriage_returns():
    b = LineBuffer(maxlen=100)
    out = []
    for chunk in (b'\x1b[1mEpoch 1\x1b[0m\r\n', b'\r  0%|   | 0/2', b'\r 50%|#5 | 1/2\x1b[', b'A\r100%|###| 2/2',
                  b'\n', b'val: top1=0.5\n\xec\xa0', b'\x95\n'):
        out += b.feed(chunk)
    assert out == ['Epoch 1', '100%|###| 2/2', 'val: top1=0.5', '정']
    assert b.partial == ''
    b.feed('\r 10%|'); assert b.partial == ' 10%|' and b.tail(1) == [' 10%|']


def test_jsonl_tail_follows_a_growing_file_through_a_cut_line_and_a_restart(tmp_path):
    f = tmp_path/'metrics.jsonl'
    t, st = JsonlTail(f), MetricsState()
    assert t.records() == []
    with open(f, 'w') as h: h.write('{"kind": "step", "model": "classifier", "step": 1, "loss": 2.0}\n{"kind": "st')
    recs = t.records(); assert [r['step'] for r in recs] == [1]
    with open(f, 'a') as h: h.write('ep", "model": "classifier", "step": 2, "loss": 1.0}\n')
    recs += t.records(); assert [r['step'] for r in recs] == [1, 2]
    with open(f, 'a') as h: h.write('{"kind": "step", "model": "classifier", "st\n{"kind": "step", "model": "classifier", "step": 2, "loss": 0.5}\n')
    recs += t.records(); assert t.skipped == 1
    for r in recs: st.add(r)
    assert st.snapshot()['models']['classifier']['steps']['loss'] == [2.0, 0.5]  # step 2 again after a resume: the later one
    f.write_text('{"kind": "event", "event": "start"}\n')  # shorter: a new file
    assert t.records() == [{'kind': 'event', 'event': 'start'}]


# ---------------------------------------------------------------- in a real browser

def _driver(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f'the browser test needs Debian chromium and chromedriver, missing: {", ".join(missing)}; '
                    'install them with `apt-get update && apt-get install -y chromium chromium-driver`')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = str(CHROMIUM)
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
              '--disable-background-networking', '--disable-component-update', '--disable-sync',
              '--disable-dev-shm-usage', '--window-size=1400,1100', f'--user-data-dir={tmp_path/"chromium-profile"}'):
        o.add_argument(a)
    return webdriver.Chrome(options=o, service=Service(str(CHROMEDRIVER)))


class _Monitor:
    "`pillsnap.monitor.main` in a subprocess on a free port; its URL (with the token) read from what it prints."
    def __init__(self, *args, cwd=None):
        code = 'from pillsnap.monitor import main; main()'
        self.proc = subprocess.Popen([sys.executable, '-c', code, '--port', '0', '--linger', '120', *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
        self.output, self.url = [], None
        for line in self.proc.stdout:
            self.output.append(line)
            if m := re.search(r'(http://127\.0\.0\.1:\d+/)\?token=(\S+)', line): self.url, self.token = m[1], m[2]; break
        assert self.url, f'the monitor printed no URL:\n{"".join(self.output)}'
        threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True).start()

    def stop(self) -> int:
        if self.proc.poll() is None: self.proc.send_signal(2)
        try: return self.proc.wait(30)
        except subprocess.TimeoutExpired: self.proc.kill(); return self.proc.wait()


def _status(url: str) -> int:
    try: return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e: return e.code


def _ws_refused(url: str) -> int:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    try:
        with connect(url, open_timeout=10): return 101
    except InvalidStatus as e: return e.response.status_code


def _wait(driver, cond, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    try: return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: cond(d))
    except Exception as e:
        raise AssertionError(f'{what}: not seen in {timeout} s; page log:\n'
                             f'{driver.find_element("id", "log").text[-2000:]}') from e


def test_monitor_streams_a_real_training_run_to_a_headless_browser(stage3_manifest, tmp_path):
    driver = _driver(tmp_path)
    run = tmp_path/'run'
    mon = _Monitor('--', sys.executable, '-c', TRAIN, stage3_manifest, run)
    try:
        # no token, a wrong token: refused, for the page and for the WebSocket
        assert _status(mon.url) == 401 and _status(mon.url + '?token=wrong') == 403
        ws = mon.url.replace('http://', 'ws://') + 'ws'
        assert _ws_refused(ws) == 403 and _ws_refused(ws + '?token=wrong') == 403
        assert _status(mon.url + '?token=' + mon.token) == 200

        driver.get(mon.url + '?token=' + mon.token)
        _wait(driver, lambda d: 'train classifier' in d.find_element('id', 'lines').text, 120, 'the first log line')
        _wait(driver, lambda d: int(d.find_element('id', 'now').get_attribute('data-records') or 0) > 0, 120,
              'a metrics update')
        first = int(driver.find_element('id', 'now').get_attribute('data-records'))
        assert str(run) in driver.find_element('id', 'rundir').text  # found from the log line: no --out in this command
        # leave the page mid-run (closing the browser must not stop training), then come back as a late joiner
        driver.get('about:blank'); time.sleep(1)
        assert mon.proc.poll() is None
        driver.get(mon.url + '?token=' + mon.token)
        _wait(driver, lambda d: 'exited, code 0' in d.find_element('id', 'state').text, 300, 'the end of training')
        now = driver.find_element('id', 'now')
        assert int(now.get_attribute('data-records')) > first  # metrics kept updating
        text = now.text
        assert 'CPU RSS' in text and re.search(r'CPU RSS \d', text), text
        assert re.search(r'GPU memory \(now / peak\) n/a / n/a', text), text  # a CPU run: not measured, not invented
        assert 'train classifier' in driver.find_element('id', 'lines').text  # the scroll-back for a late joiner
        system = driver.find_element('id', 'system')  # the process tree as measured by the monitor itself
        assert float(system.get_attribute('data-rss')) > 50 and 'GPU memory (NVML) n/a' in system.text, system.text
        assert not driver.find_element('id', 'crash').is_displayed()
        assert not driver.find_element('id', 'readiness').is_displayed()  # no evaluation yet
        (run/'readiness.json').write_text(json.dumps({'ready': False, 'gates': {'top1': {'value': 0.12, 'pass': False}}}))
        _wait(driver, lambda d: d.find_element('id', 'readiness').is_displayed(), 30, 'the readiness panel')
        assert 'ready: false' in driver.find_element('id', 'readiness').text
        REPORTS.mkdir(exist_ok=True)
        driver.set_window_size(1400, 1750); time.sleep(0.5)  # the whole page: log, values and curves
        driver.save_screenshot(str(REPORTS/'monitor.png'))
        assert (REPORTS/'monitor.png').stat().st_size > 10_000

        # a crash: the exit code and the last lines are shown
        bad = _Monitor('--', sys.executable, '-c', "import sys; print('loading data'); sys.exit('boom: no such manifest')")
        try:
            driver.get(bad.url + '?token=' + bad.token)
            _wait(driver, lambda d: d.find_element('id', 'crash').is_displayed(), 60, 'the crash panel')
            crash = driver.find_element('id', 'crash').text
            assert 'exited with code 1' in crash and 'boom: no such manifest' in crash and 'loading data' in crash, crash
            assert bad.stop() == 1  # the monitor exits with the command's code
        finally: bad.stop()
    finally:
        driver.quit()
        code = mon.stop()
    assert code == 0, ''.join(mon.output)
    assert (run/'classifier'/'last.pt').exists()


def test_ctrl_c_is_forwarded_to_the_command_and_its_exit_code_returned():
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGINT, lambda *a: (print('saving last.pt', flush=True), sys.exit(5)))\n"
             "print('ready', flush=True); time.sleep(120)")
    mon = _Monitor('--', sys.executable, '-c', child)
    from websockets.sync.client import connect
    with connect(mon.url.replace('http://', 'ws://') + 'ws?token=' + mon.token, open_timeout=10) as ws:
        seen, t0 = [], time.time()
        while 'ready' not in seen and time.time() - t0 < 30:
            m = json.loads(ws.recv(timeout=30)); seen += m.get('lines', [])
    mon.proc.send_signal(2)
    assert mon.proc.wait(30) == 5  # the command's own exit code, after it handled SIGINT
    assert any('asking the training process to stop' in l for l in mon.output), mon.output


def test_attach_to_a_run_folder_serves_its_log_and_metrics(tmp_path):
    from pillsnap.runlog import RunLog
    log = RunLog(tmp_path)
    log.info('train classifier (sequential, profile tiny) on /m into /r')
    log.write('step', model='classifier', epoch=0, step=1, loss=1.5, rss_mb=100.0)
    mon = _Monitor('--attach', tmp_path)
    from websockets.sync.client import connect
    try:
        with connect(mon.url.replace('http://', 'ws://') + 'ws?token=' + mon.token, open_timeout=10) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello['process']['state'] == 'attached' and hello['process']['run_dir'] == str(tmp_path)
            lines, records = list(hello['lines']), (hello['metrics'] or {}).get('records', 0)
            log.write('step', model='classifier', epoch=0, step=2, loss=1.0); log.info('epoch 0 done')
            t0 = time.time()
            while (records < 2 or not any('epoch 0 done' in l for l in lines)) and time.time() - t0 < 30:
                m = json.loads(ws.recv(timeout=30))
                lines += m.get('lines', []); records = m.get('metrics', {}).get('records', records)
            assert any('train classifier' in l for l in lines) and any('epoch 0 done' in l for l in lines), lines
            assert records == 2
    finally: mon.stop()


def test_a_second_ctrl_c_kills_the_command_with_its_process_group():
    import psutil
    child = ("import signal, subprocess, sys, time\n"
             "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # a command that does not stop on SIGINT
             "w = subprocess.Popen(['sleep', '120'])\n"
             "print('worker', w.pid, flush=True); time.sleep(120)")
    mon = _Monitor('--', sys.executable, '-c', child)
    from websockets.sync.client import connect
    with connect(mon.url.replace('http://', 'ws://') + 'ws?token=' + mon.token, open_timeout=10) as ws:
        seen, t0 = [], time.time()
        while not any(l.startswith('worker') for l in seen) and time.time() - t0 < 30:
            seen += json.loads(ws.recv(timeout=30)).get('lines', [])
    worker = int(next(l for l in seen if l.startswith('worker')).split()[1])
    mon.proc.send_signal(2); time.sleep(1.5)
    assert mon.proc.poll() is None  # the first is ignored by this command
    mon.proc.send_signal(2)
    assert mon.proc.wait(30) == 128 + 9  # killed (SIGKILL), as a shell reports it
    time.sleep(0.5)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
