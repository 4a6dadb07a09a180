"""The REST API (pillsnap.serve) on the shared real tiny run: every endpoint, every refusal as a JSON 4xx without paths
or tracebacks, the body cap enforced while streaming, the rate limit, reload during requests, a failed reload, the
bounded queue's 503, and a small load test against a real uvicorn server on loopback (zero failed requests)."""
import asyncio, io, json, os, shutil, socket, struct, subprocess, sys, time, zlib
import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from eval_run import split_files, tiny_run  # noqa: F401 (fixture)
from pillsnap.predict import TwoStagePredictor
from pillsnap.serve import MAX_BODY, create_app, serve

KEY, ADMIN = 'user-key-1', 'admin-key-1'
H, HA = {'X-API-Key': KEY}, {'X-API-Key': ADMIN}


def png_declaring(w, h) -> bytes:
    "A ~70-byte PNG whose header declares w×h pixels: a decompression bomb seen from outside."
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))


def encoded(fmt, size=(64, 48)) -> bytes:
    b = io.BytesIO(); Image.new('RGB', size, (180, 40, 40)).save(b, format=fmt); return b.getvalue()


@pytest.fixture(scope='module')
def images(tiny_run):
    "(name, bytes) of real combination and single-pill photos of the run's test split."
    combo, _ = split_files(tiny_run, 'test', 'combo')
    single, _ = split_files(tiny_run, 'test', 'single')
    return dict(combo=[(p.name, p.read_bytes()) for p in combo[:3]], single=[(p.name, p.read_bytes()) for p in single[:3]])


@pytest.fixture(scope='module')
def client(tiny_run):
    with TestClient(create_app(tiny_run, api_keys=[KEY], admin_keys=[ADMIN], rate_limit=None)) as c: yield c


def assert_clean_error(r, status, *words):
    "A JSON refusal with the expected status and message words, no server path or traceback."
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers['content-type'].startswith('application/json')
    msg = r.json()['detail']
    for w in words: assert w in msg, msg
    assert 'Traceback' not in r.text and '/tmp' not in r.text and 'site-packages' not in r.text


def test_health_needs_no_key_and_version_reports_the_models(client, tiny_run):
    assert client.get('/health').json() == {'status': 'ok'}
    assert_clean_error(client.get('/version'), 401, 'missing X-API-Key')
    v = client.get('/version', headers=H).json()
    assert v['pillsnap'] and v['generation'] == 1 and v['loaded_at']
    assert v['classifier']['checkpoint'] == 'classifier/best.pt'
    assert v['detector']['checkpoint'] == 'detector/weights/best.pt' and v['detector']['modified']
    assert v['class_map_hash'] == (tiny_run/'class_map.sha256').read_text().split()[0]
    assert str(tiny_run) not in json.dumps(v)


def test_predict_returns_the_predictors_json_for_both_modes(client, tiny_run, images):
    pr = TwoStagePredictor(tiny_run)
    assert client.get('/version', headers=H).json()['classifier']['classes'] == len(pr.codes)
    for mode in ('combo', 'single'):
        name, data = images[mode][0]
        r = client.post('/predict', headers=H, files={'image': (f'/etc/x/{name}', data, 'application/octet-stream')},
                        data={'mode': mode, 'top_k': '3'})
        assert r.status_code == 200, r.text
        d = r.json()
        want = pr.predict(Image.open(io.BytesIO(data)), mode=mode, top_k=3)[0]
        assert d['image'] == name and d['mode'] == mode and (d['width'], d['height']) == (want.width, want.height)
        assert [p['code'] for p in d['pills']] == [p.code for p in want.pills] 
        assert [p['box_xyxy'] for p in d['pills']] == [p.box_xyxy for p in want.pills]
        assert all(len(p['top_k']) == 3 for p in d['pills']) and set(d['timing_ms']) >= {'detect', 'classify'}
    assert len(d['pills']) == 1  # single mode: one pill per photo, always


def test_batch_answers_each_image_in_order_and_refuses_17(client, images):
    files = [('image', (n, b)) for n, b in images['combo'] + images['single'][:1]]
    r = client.post('/batch', headers=H, files=files, data={'mode': 'combo', 'conf': '0.25'})
    assert r.status_code == 200, r.text
    assert [p['image'] for p in r.json()['predictions']] == [n for n, _ in images['combo'] + images['single'][:1]]
    small = encoded('PNG', (32, 32))
    r = client.post('/batch', headers=H, files=[('image', (f'{i}.png', small)) for i in range(17)], data={'mode': 'single'})
    assert_clean_error(r, 413, 'at most 16 images', 'got 17')
    assert_clean_error(client.post('/predict', headers=H, files=[('image', ('a.png', small))] * 2, data={'mode': 'single'}),
                       413, 'at most 1 image', '/batch')


def test_a_sideways_phone_photo_is_answered_upright(client, tiny_run, images):
    "A JPEG stored sideways with EXIF Orientation 6 (as phones save it) is turned upright: sizes and boxes as a viewer shows it."
    name, data = images['combo'][0]
    up = Image.open(io.BytesIO(data)).convert('RGB')
    exif = Image.Exif(); exif[0x0112] = 6  # 'turn 90° clockwise to view'
    b = io.BytesIO(); up.transpose(Image.Transpose.ROTATE_90).save(b, format='JPEG', quality=95, exif=exif.tobytes())
    r = client.post('/predict', headers=H, files={'image': ('phone.jpg', b.getvalue())}, data={'mode': 'combo'})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d['width'], d['height']) == up.size != up.transpose(Image.Transpose.ROTATE_90).size
    assert d['pills'] and all(0 <= x0 < x1 <= up.width and 0 <= y0 < y1 <= up.height for x0, y0, x1, y1 in (p['box_xyxy'] for p in d['pills']))
    assert len(d['pills']) == len(TwoStagePredictor(tiny_run).predict(up, mode='combo')[0].pills)


@pytest.mark.parametrize('case', ['no key', 'wrong key', 'gif', 'text as png', 'bomb', 'too many pixels', 'missing mode', 'auto mode',
                                  'missing image', 'image as text field', 'bad conf', 'truncated png', 'not multipart',
                                  'user key on reload', 'unknown path'])
def test_each_bad_request_is_a_clear_json_4xx(client, images, case):
    good = images['single'][0][1]
    post = lambda files=None, data={'mode': 'single'}, headers=H, url='/predict', **kw: client.post(
        url, headers=headers, files=files if files is not None else {'image': ('a.png', good)}, data=data, **kw)
    r, status, words = {
        'no key': (lambda: post(headers={}), 401, ['missing X-API-Key']),
        'wrong key': (lambda: post(headers={'X-API-Key': KEY + 'x'}), 401, ['invalid API key']),
        'gif': (lambda: post(files={'image': ('a.gif', encoded('GIF'), 'image/gif')}), 415, ['a.gif', 'not a PNG, JPEG or WebP']),
        'text as png': (lambda: post(files={'image': ('x.png', b'just text ' * 50, 'image/png')}), 415, ['x.png', 'Content-Type is ignored']),
        'bomb': (lambda: post(files={'image': ('bomb.png', png_declaring(100_000, 100_000), 'image/png')}), 413,
                 ['bomb.png', 'decompression-bomb', 'nothing was decoded']),
        'too many pixels': (lambda: post(files={'image': ('big.png', png_declaring(6000, 5000))}), 413,
                            ['big.png', '6000×5000 = 30,000,000 pixels', 'limit of 25,000,000']),
        'missing mode': (lambda: post(data={}), 422, ["'mode' is required", 'no automatic mode']),
        'auto mode': (lambda: post(data={'mode': 'auto'}), 422, ["not 'auto'"]),
        'missing image': (lambda: post(files={'other': ('a.png', good)}), 422, ["'image' is required"]),
        'image as text field': (lambda: client.post('/predict', headers=H, data={'mode': 'single', 'image': 'abc'}), 422, ["must be a file"]),
        'bad conf': (lambda: post(data={'mode': 'combo', 'conf': 'high'}), 422, ['conf must be a number']),
        'truncated png': (lambda: post(files={'image': ('cut.png', encoded('PNG', (300, 200))[:120])}), 422, ['cut.png', 'cannot be decoded']),
        'not multipart': (lambda: client.post('/predict', headers={**H, 'Content-Type': 'image/png'}, content=good), 422, ["'mode' is required"]),
        'user key on reload': (lambda: client.post('/reload', headers=H), 403, ['admin key']),
        'unknown path': (lambda: client.get('/admin', headers=H), 404, ['Not Found']),
    }[case]
    assert_clean_error(r(), status, *words)


def test_body_cap_refuses_a_declared_oversize_body_and_stops_reading_a_streamed_one(client):
    big = b'\0' * (MAX_BODY + 1)
    assert_clean_error(client.post('/predict', headers={**H, 'Content-Type': 'multipart/form-data; boundary=x'}, content=big),
                       413, 'larger than the limit of 20,971,520 bytes')
    sent = []
    async def chunks():  # 100 MB in 1 MB chunks, no Content-Length (chunked): the server must stop reading at the cap
        for i in range(100):
            sent.append(i)
            yield (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' if i == 0 else b'') + b'\1' * 2**20

    async def go():  # httpx's ASGI transport hands the body over chunk by chunk, as the app asks for it
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url='http://t') as c:
            return await c.post('/predict', headers={**H, 'Content-Type': 'multipart/form-data; boundary=x'}, content=chunks())
    r = asyncio.run(go())
    assert 'content-length' not in r.request.headers
    assert_clean_error(r, 413, 'larger than the limit')
    assert len(sent) <= 22, f'{len(sent)} MB were read before refusing'


def test_rate_limit_per_key_answers_429_with_retry_after(tiny_run):
    with TestClient(create_app(tiny_run, api_keys=[KEY, 'other'], rate_limit=0.5, burst=2)) as c:
        codes = [c.get('/version', headers=H).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.get('/version', headers=H)
        assert_clean_error(r, 429, 'rate limit exceeded')
        assert int(r.headers['retry-after']) >= 1
        assert c.get('/version', headers={'X-API-Key': 'other'}).status_code == 200  # its own bucket
        assert c.get('/health').status_code == 200  # never limited


def test_reload_during_requests_drops_none(tiny_run, images):
    app = create_app(tiny_run, api_keys=[KEY], admin_keys=[ADMIN], rate_limit=None, queue=32)
    name, data = images['combo'][0]

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url='http://t') as c:
            pred = lambda: c.post('/predict', headers=H, files={'image': (name, data)}, data={'mode': 'combo'})
            first = [asyncio.create_task(pred()) for _ in range(4)]
            await asyncio.sleep(0.05)
            reload = asyncio.create_task(c.post('/reload', headers=HA))
            later = [asyncio.create_task(pred()) for _ in range(4)]
            return await asyncio.gather(*first), await reload, await asyncio.gather(*later), (await c.get('/version', headers=H)).json()

    old = app.state.pillsnap.models
    first, rel, later, version = asyncio.run(go())
    assert [r.status_code for r in first + later] == [200] * 8
    assert len({json.dumps(r.json()['pills']) for r in first + later}) == 1  # same checkpoints: same answers
    assert rel.status_code == 200 and rel.json()['generation'] == 2 and version['generation'] == 2
    assert app.state.pillsnap.models is not old


def test_failed_reload_keeps_serving_the_previous_models(tiny_run, tmp_path, images):
    run = tmp_path/'run'
    shutil.copytree(tiny_run, run)
    with TestClient(create_app(run, api_keys=[KEY], admin_keys=[ADMIN], rate_limit=None), raise_server_exceptions=False) as c:
        (run/'classifier'/'best.pt').write_bytes(b'not a checkpoint')
        r = c.post('/reload', headers=HA)
        assert_clean_error(r, 500, 'reload failed', 'previous models are still serving')
        assert str(run) not in r.text
        assert c.post('/predict', headers=H, files={'image': images['single'][0]}, data={'mode': 'single'}).status_code == 200
        assert c.get('/version', headers=H).json()['generation'] == 1


def test_full_queue_answers_503(tiny_run, images):
    app = create_app(tiny_run, api_keys=[KEY], rate_limit=None, workers=1, queue=1)
    st = app.state.pillsnap
    name, data = images['single'][0]

    async def go():
        held = st.models.pool.get()  # the only predictor is taken: the worker waits, the queue fills
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url='http://t') as c:
            pred = lambda: c.post('/predict', headers=H, files={'image': (name, data)}, data={'mode': 'single'})
            running = [asyncio.create_task(pred()) for _ in range(2)]
            for _ in range(200):
                if st.busy == 2: break
                await asyncio.sleep(0.01)
            refused = await pred()
            st.models.pool.put(held)
            return refused, await asyncio.gather(*running)

    refused, done = asyncio.run(go())
    assert_clean_error(refused, 503, 'queue is full')
    assert refused.headers['retry-after'] == '1'
    assert [r.status_code for r in done] == [200, 200]


def test_serve_refuses_a_public_host_without_keys(tiny_run, monkeypatch):
    monkeypatch.delenv('PILLSNAP_API_KEYS', raising=False)
    monkeypatch.delenv('PILLSNAP_ADMIN_KEYS', raising=False)
    with pytest.raises(ValueError, match='refusing to serve on 0.0.0.0: no API key configured'):
        serve(tiny_run, host='0.0.0.0')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_load_on_a_real_uvicorn_server_has_no_failed_request(tiny_run, images):
    port = free_port()
    env = {**os.environ, 'PILLSNAP_API_KEYS': KEY}
    code = f"from pillsnap.serve import serve; serve({str(tiny_run)!r}, port={port}, rate_limit=None, queue=64, log_level='warning')"
    proc = subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f'http://127.0.0.1:{port}'
        for _ in range(600):
            try:
                if httpx.get(url + '/health').status_code == 200: break
            except httpx.TransportError: time.sleep(0.1)
            assert proc.poll() is None, proc.stdout.read().decode()
        name, data = images['combo'][0]

        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                return await asyncio.gather(*[c.post('/predict', headers={'X-API-Key': KEY}, files={'image': (name, data)},
                                                     data={'mode': 'combo'}) for _ in range(40)])
        rs = asyncio.run(go())
        assert [r.status_code for r in rs] == [200] * 40
        assert len({json.dumps(r.json()['pills']) for r in rs}) == 1
        r = httpx.post(url + '/predict', headers={'X-API-Key': KEY, 'Content-Type': 'multipart/form-data; boundary=x'},
                       content=b'\0' * (MAX_BODY + 1))
        assert r.status_code == 413 and 'larger than the limit' in r.json()['detail']
    finally:
        proc.terminate(); proc.wait(30)
