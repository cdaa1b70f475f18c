/* test_page.mjs - genred's web page in a real browser.
 *
 * Starts `genred serve` on 127.0.0.1 (an ephemeral port) with the bundled
 * model, makes test audio from real GTZAN excerpts with the ffmpeg CLI, and
 * drives Debian's headless Chromium with playwright-core: a song is chosen
 * from the keyboard and uploaded through the page's file input, and the bars,
 * the timeline and the spectrogram must show exactly what the API answers for
 * the same bytes; random bytes named .mp3 must show the API's 415 message, a
 * 2-second WAV dropped on the page its 422 message, an upload over the limit
 * its 413 message, an upload to a daemon whose one classification slot is held
 * by a 10-minute file (and no queue) its 503 message (and "Try again" must then succeed); with
 * API keys on, the page must load without one, ask for one, refuse a wrong
 * one with the API's message, and work once given the right one; the page
 * must fit a phone's width. With the bundled CNN the verdict, tags and
 * embedding stay hidden (its answer has none).
 *
 * The pretrained backbone: a second daemon serves the model that
 * scripts/get-model converts from ../shared's checkpoint (into a temporary
 * folder, never the repository). Speech from espeak-ng, then a rock excerpt,
 * must show the API's verdict (mixed), its spoken pieces as hatched "not
 * music" cells, its tags group by group, and its embedding, which the copy
 * button must put on the clipboard number for number (and, where the browser
 * refuses, show selected for the user to copy); speech alone must say it is
 * not music and name no genre, and a song after it must get its genre back,
 * on a phone's width. Without the checkpoint only these tests are skipped,
 * with the reason.
 *
 * A web front-end of its own origin (a page served from a second local
 * port) uploads a song to a daemon whose cors_origins lists it and shows the
 * answer, through the browser's preflight when it sends a raw body or an API
 * key; the same page from an origin not listed is refused by the browser.
 * Screenshots (desktop and phone) go to $GENRED_ARTIFACTS, else
 * tests/artifacts/web/.
 *
 * Environment (set by `meson test`, see tests/meson.build): GENRED_BIN,
 * GENRED_SOURCE, GENRED_SHARED. Run by tests/web/run.sh under `node --test`.
 * Needs ffmpeg, espeak-ng and python3 (standard library) besides.
 * The daemon and the browser are stopped whatever happens; every wait is
 * bounded.
 *
 * What it does not do: judge the model's accuracy, or test the API's
 * contract beyond what the page shows (tests/test_api.py does). */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-proxy-server', '--disable-crash-reporter'];
const LISTEN_LINE = /^genred: listening on (http:\/\/127\.0\.0\.1:(\d+))\s*$/m;
const UPLOAD_LIMIT = 4 * 1024 * 1024; /* the daemon's --max-upload-bytes */
const START_TIMEOUT_MS = 30_000;
const STEP_TIMEOUT_MS = 60_000;       /* any one browser wait */
const FFMPEG_TIMEOUT_MS = 120_000;
const TEST_TIMEOUT_MS = 240_000;
const PAGE_QUERY = '?segments=1&mel=1&embedding=1'; /* what app.js asks for */

function need(name, what) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is not set; it must name ${what} ` +
                          '(`meson test` sets it)');
  if (!fs.existsSync(v)) throw new Error(`${name}=${v} does not exist; it must name ${what}`);
  return v;
}

const BIN = need('GENRED_BIN', 'the genred binary');
const SOURCE = need('GENRED_SOURCE', 'the repository root');
const SHARED = need('GENRED_SHARED', 'the shared folder (with data/gtzan16k)');
const MODEL = path.join(SOURCE, 'models', 'gtzan-cnn.gmodel');
const BACKBONE = 'efficientat-mn04';
const CHECKPOINT = path.join(SHARED, 'models', BACKBONE, 'mn04_as_mAP_432.pt');
/* The backbone tests' skip reason, or false when they run. */
const BACKBONE_SKIP = fs.existsSync(CHECKPOINT) ? false
  : `${CHECKPOINT} is missing: the backbone's page tests need ../shared's checkpoint`;
const ARTIFACTS = process.env.GENRED_ARTIFACTS || path.join(SOURCE, 'tests', 'artifacts', 'web');

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'genred-web-'));
const daemons = [];  /* every daemon started: { proc, url, stdout, stderr } */
const frontEnds = []; /* every front-end server started (CORS) */
let daemon = null;   /* the main one */
let backbone = null; /* the one with the pretrained backbone (null when skipped) */
let browser = null;
const audio = {};    /* name -> path */

/* ---- the daemon ---------------------------------------------------------- */

/* Starts `genred serve` with a model (by default the bundled one) and extra
 * flags; resolves once it prints its listening line. */
function startDaemon(flags = [], model = MODEL) {
  for (const [p, what] of [[BIN, 'genred binary'], [model, 'model'], [CHROMIUM, 'chromium']])
    if (!fs.existsSync(p)) throw new Error(`${what} ${p} is missing`);
  /* Settings from the flags alone: GENRED_* of the test environment would
   * be read as configuration too. */
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GENRED_')));
  const proc = spawn(BIN, ['serve', '--listen', '127.0.0.1', '--port', '0', '--model', model,
                           ...flags], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const d = { proc, url: null, stdout: '', stderr: '' };
  daemons.push(d);
  proc.stderr.on('data', (b) => { d.stderr = (d.stderr + b).slice(-8000); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(
      `genred printed no listening line within ${START_TIMEOUT_MS} ms\n${d.stdout}\n${d.stderr}`)),
      START_TIMEOUT_MS);
    proc.stdout.on('data', (b) => {
      d.stdout += b;
      const m = LISTEN_LINE.exec(d.stdout);
      if (m && !d.url) {
        d.url = m[1];
        clearTimeout(timer);
        resolve(d);
      }
    });
    proc.on('exit', (code, sig) => {
      clearTimeout(timer);
      if (!d.url) reject(new Error(`genred exited (${code ?? sig}) before listening\n${d.stderr}`));
    });
  });
}

/* SIGTERM, then SIGKILL after 20 s; resolves to the exit code (null if it
 * had to be killed). */
function stopDaemon(d) {
  if (!d || d.proc.exitCode !== null || d.proc.signalCode !== null)
    return Promise.resolve(d ? d.proc.exitCode : null);
  return new Promise((resolve) => {
    const kill = setTimeout(() => d.proc.kill('SIGKILL'), 20_000);
    d.proc.once('exit', (code) => {
      clearTimeout(kill);
      resolve(code);
    });
    d.proc.kill('SIGTERM');
  });
}

/* Whatever happens, no daemon outlives the test process. */
process.on('exit', () => {
  for (const d of daemons) if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGKILL');
});

/* ---- test audio ------------------------------------------------------------ */

function ffmpeg(out, ...args) {
  const argv = ['-nostdin', '-hide_banner', '-loglevel', 'error', '-y', ...args, out];
  const r = spawnSync('ffmpeg', argv, { timeout: FFMPEG_TIMEOUT_MS, encoding: 'utf8' });
  if (r.error || r.status !== 0 || !fs.existsSync(out))
    throw new Error(`ffmpeg ${argv.join(' ')} failed: ${r.error || r.stderr}`);
  return out;
}

function durationS(file) {
  const r = spawnSync('ffprobe', ['-v', 'error', '-show_entries', 'format=duration',
                                  '-of', 'csv=p=0', file], { timeout: 30_000, encoding: 'utf8' });
  return r.status === 0 ? parseFloat(r.stdout) : 0;
}

/* The first three (sorted) full-length rock excerpts, as one 90 s, 44.1 kHz
 * stereo MP3: long enough for the trim rule, so the page shows a trimmed
 * song of 20 pieces. */
function makeAudio() {
  const dir = path.join(SHARED, 'data', 'gtzan16k', 'rock');
  if (!fs.existsSync(dir)) throw new Error(`GTZAN data missing: ${dir}`);
  const sources = fs.readdirSync(dir).filter((f) => f.endsWith('.flac')).sort()
    .map((f) => path.join(dir, f)).filter((f) => durationS(f) >= 29.9).slice(0, 3);
  if (sources.length !== 3) throw new Error(`need 3 excerpts of >= 30 s in ${dir}`);
  const inputs = sources.flatMap((s) => ['-i', s]);
  audio.song = ffmpeg(path.join(work, 'song.mp3'), ...inputs, '-filter_complex',
                      '[0:a][1:a][2:a]concat=n=3:v=0:a=1[out]', '-map', '[out]',
                      '-ar', '44100', '-ac', '2', '-c:a', 'libmp3lame', '-b:a', '192k');
  /* Ten minutes of one excerpt, looped: 200 chunks with trim=0. */
  audio.long = ffmpeg(path.join(work, 'long.wav'), '-stream_loop', '19', '-i', sources[0],
                      '-ar', '16000', '-ac', '1', '-c:a', 'pcm_s16le');
  audio.short = ffmpeg(path.join(work, 'short.wav'), '-i', sources[0], '-t', '2',
                       '-ar', '44100', '-ac', '2', '-c:a', 'pcm_s16le');
  /* Random bytes (a fixed xorshift stream, so every run sends the same). */
  const junk = Buffer.alloc(64 * 1024);
  let x = 0x9e3779b9;
  for (let i = 0; i < junk.length; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    junk[i] = x & 0xff;
  }
  audio.junk = path.join(work, 'junk.mp3');
  fs.writeFileSync(audio.junk, junk);
  audio.huge = path.join(work, 'huge.wav');
  fs.writeFileSync(audio.huge, Buffer.alloc(UPLOAD_LIMIT + 512 * 1024));
}

/* The backbone model, converted into the work folder by the project's own
 * script, as a user would get it. */
function makeBackboneModel() {
  const r = spawnSync('python3', [path.join(SOURCE, 'scripts', 'get-model'), BACKBONE,
                                  '--from', CHECKPOINT, '--out', work],
                      { timeout: FFMPEG_TIMEOUT_MS, encoding: 'utf8' });
  const model = path.join(work, `${BACKBONE}-genres.gmodel`);
  if (r.error || r.status !== 0 || !fs.existsSync(model))
    throw new Error(`scripts/get-model failed: ${r.error || r.stderr}`);
  return model;
}

/* Speech from espeak-ng (16 s, 5 pieces, too short to trim), and 30 s of it
 * followed by a 30 s rock excerpt: trimmed to 0:15-0:45, that is 5 spoken
 * pieces, then 5 of music. */
function makeSpeech() {
  const text = 'Welcome back to the show. Today we look at how printing changed the way ' +
    'people shared ideas, and our guest, a historian, tells us about the first workshops ' +
    'and the books they made. After the break we take your questions, so stay with us, ' +
    'and thank you for listening to this episode.';
  const raw = path.join(work, 'speech-raw.wav');
  const r = spawnSync('espeak-ng', ['-w', raw, text], { timeout: FFMPEG_TIMEOUT_MS, encoding: 'utf8' });
  if (r.error || r.status !== 0 || !fs.existsSync(raw))
    throw new Error(`espeak-ng failed (Debian package espeak-ng): ${r.error || r.stderr}`);
  audio.speech = ffmpeg(path.join(work, 'speech.wav'), '-i', raw, '-ar', '16000', '-ac', '1',
                        '-c:a', 'pcm_s16le');
  const rock = path.join(SHARED, 'data', 'gtzan16k', 'rock', 'rock.00000.flac');
  audio.mixed = ffmpeg(path.join(work, 'speech-then-rock.wav'), '-stream_loop', '1', '-i', raw,
                       '-i', rock, '-filter_complex',
                       '[0:a]atrim=0:30,aresample=16000,aformat=channel_layouts=mono[a];' +
                       '[1:a]atrim=0:30,aresample=16000,aformat=channel_layouts=mono[b];' +
                       '[a][b]concat=n=2:v=0:a=1[out]', '-map', '[out]', '-c:a', 'pcm_s16le');
}

/* The API's own answer for a file, as the page would ask for it. */
async function classify(file, query = PAGE_QUERY, d = daemon) {
  const form = new FormData();
  form.append('file', new Blob([fs.readFileSync(file)]), path.basename(file));
  const r = await fetch(d.url + '/v1/classify' + query, { method: 'POST', body: form,
                                                        signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
  return { status: r.status, body: await r.json() };
}

/* Polls until pred() is true; false if it never was within ms. */
async function eventually(pred, ms) {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (await pred()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

/* ---- the browser ------------------------------------------------------------ */

/* Opens the page on daemon d; resolves once `ready` is visible, by default
 * the model line that /v1/model fills in. */
async function openPage(options = {}, d = daemon, ready = null) {
  const context = await browser.newContext(options);
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    /* The browser logs every non-2xx answer as "Failed to load resource";
     * those are the point of the error tests. Anything else is a fault,
     * a Content-Security-Policy refusal above all. */
    if (m.type() === 'error' && !/Failed to load resource: the server responded/.test(m.text()))
      problems.push(`console error: ${m.text()}`);
  });
  page.on('request', (req) => {
    if (!req.url().startsWith(d.url + '/')) problems.push(`request outside genred: ${req.url()}`);
  });
  /* A listener from the start turns file-chooser interception on before
   * any key is pressed; waitForEvent alone turns it on asynchronously and
   * can miss a chooser that opens at once. */
  page.on('filechooser', () => {});
  await page.goto(d.url + '/', { waitUntil: 'load' });
  if (ready) await page.locator(ready).waitFor({ state: 'visible' });
  else await page.locator('#model-info').filter({ hasText: 'model ' }).waitFor();
  return { context, page, problems };
}

function formatPercent(p) {
  return p.toFixed(1) + '%';
}

function formatTime(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
}

async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: true });
}

/* Counts canvas pixels that differ from the first one: a drawn spectrogram
 * has thousands, a blank canvas none. */
function canvasVariety(page, selector = '#mel') {
  return page.locator(selector).evaluate((c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let differ = 0;
    for (let i = 4; i < d.length; i += 4)
      if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) differ++;
    return { width: c.width, height: c.height, differ };
  });
}

async function expectError(page, status, code, message) {
  const box = page.locator('#error');
  await box.waitFor({ state: 'visible' });
  assert.match(await page.locator('#error-title').innerText(), new RegExp(`\\(${status} ${code}\\)$`));
  assert.equal(await page.locator('#error-message').innerText(), message);
  assert.equal(await box.getAttribute('role'), 'alert');
  assert.equal(await page.locator('#result').isVisible(), false);
}

/* The page shows exactly what the API answered (ans): the title or the "not
 * music" message, the verdict, bars, timeline and legend, tags, spectrogram
 * and embedding; each of the verdict, tags and embedding hidden when the
 * answer lacks it. Returns the cells' colours by genre. */
async function expectShown(page, ans) {
  const bars = page.locator('#bars .bar');
  assert.equal(await bars.count(), ans.genres.length);
  for (let i = 0; i < ans.genres.length; i++) {
    const g = ans.genres[i], bar = bars.nth(i);
    assert.equal(await bar.locator('.bar-genre').innerText(), g.genre, `bar ${i}`);
    assert.equal(await bar.locator('.bar-value').innerText(), formatPercent(g.percent), `bar ${i}`);
    assert.match(await bar.getAttribute('title'), new RegExp(`mean probability ${g.probability.toFixed(3)}$`));
    const width = await bar.locator('.bar-fill').evaluate((e) => e.style.width);
    assert.equal(parseFloat(width).toFixed(3), g.percent.toFixed(3), `bar ${i} width`);
  }

  /* A genre in the title, or the "not music" message and none. */
  const title = await page.locator('#result-title').innerText();
  const note = await page.locator('#genres-note').innerText();
  if (ans.top === null) {
    assert.equal(title, 'This does not sound like music');
    assert.equal(await page.locator('#top-genre').isVisible(), false);
    assert.match(await page.locator('#status').innerText(), /does not sound like music.*no genre is claimed/);
    assert.match(note, /^No genre is claimed\. For reference only/);
    assert.match(await page.locator('#bars').getAttribute('class'), /\bguess\b/);
  } else {
    assert.equal(title, `Top genre: ${ans.top}`);
    assert.equal(await page.locator('#top-genre').innerText(), ans.top);
    assert.match(await page.locator('#status').innerText(), new RegExp(`sounds most like ${ans.top}\\.$`));
    assert.doesNotMatch(await page.locator('#bars').getAttribute('class'), /\bguess\b/);
    if (ans.music && ans.music.chunks < ans.chunks)
      assert.match(note, new RegExp(`^Share of the ${ans.music.chunks} music pieces `));
    else
      assert.match(note, /^Share of 3-second pieces /);
  }

  const verdict = page.locator('#verdict');
  if (ans.music) {
    const names = { music: 'Music', mixed: 'Partly music', not_music: 'Not music' };
    assert.equal(await verdict.isVisible(), true);
    assert.equal(await page.locator('#verdict-badge').innerText(), names[ans.music.verdict]);
    const text = await page.locator('#verdict-text').innerText();
    if (ans.music.chunks === 0)
      assert.match(text, new RegExp(`^(None of the ${ans.chunks} pieces sounds|The one piece does not sound) like music`));
    else
      assert.match(text, new RegExp(`^${ans.music.chunks} of ${ans.chunks} pieces? \\(${Math.round(100 * ans.music.share)}%\\) sounds? like music`));
  } else {
    assert.equal(await verdict.isVisible(), false, 'a verdict without one in the answer');
  }

  /* Timeline: a cell per piece; pieces judged not music hatched and named
   * so; cells of one genre share a colour; the legend names each genre seen
   * in a music piece, and "not music" when there is one. */
  const cells = page.locator('#timeline .cell');
  assert.equal(await cells.count(), ans.chunks);
  assert.equal(ans.segments.length, ans.chunks);
  const shown = await cells.evaluateAll((cs) => cs.map((c) => ({
    title: c.title, genre: c.dataset.genre ?? null, notMusic: c.classList.contains('not-music'),
    colour: getComputedStyle(c).backgroundColor, hatch: getComputedStyle(c).backgroundImage })));
  for (let k = 0; k < ans.chunks; k++) {
    const s = ans.segments[k], c = shown[k], music = s.music !== false;
    const time = `${formatTime(s.start_s)}–${formatTime(s.end_s)}`;
    assert.equal(c.title, music ? `${time} ${s.top}` : `${time} not music`, `cell ${k}`);
    assert.equal(c.notMusic, !music, `cell ${k}`);
    assert.equal(c.hatch === 'none', music, `cell ${k} hatching: ${c.hatch}`);
  }
  const byGenre = new Map();
  for (const c of shown.filter((x) => !x.notMusic)) {
    assert.equal(byGenre.get(c.genre) ?? c.colour, c.colour, `cells of ${c.genre} differ in colour`);
    byGenre.set(c.genre, c.colour);
  }
  assert.equal(new Set(byGenre.values()).size, byGenre.size, 'two genres share a colour');
  const legend = [...byGenre.keys()].sort();
  if (shown.some((c) => c.notMusic)) legend.push('not music');
  assert.deepEqual((await page.locator('#legend li').allInnerTexts()).sort(), legend.sort());
  assert.equal(/Hatched pieces are not music/.test(await page.locator('#timeline-note').innerText()),
               shown.some((c) => c.notMusic));

  /* Tags, group by group, in the API's order. */
  const tagsPanel = page.locator('#tags-panel');
  if (ans.tags) {
    assert.equal(await tagsPanel.isVisible(), true);
    for (const group of ['instrument', 'vocal', 'mood']) {
      const want = ans.tags.filter((t) => t.group === group);
      const list = page.locator(`#tags-${group}`);
      if (want.length === 0) {
        assert.deepEqual(await list.locator('li').allInnerTexts(), ['none clearly heard'], group);
        continue;
      }
      assert.deepEqual(await list.locator('.tag-name').allInnerTexts(), want.map((t) => t.tag), group);
      assert.deepEqual(await list.locator('.tag-value').allInnerTexts(),
                       want.map((t) => t.probability.toFixed(2)), group);
      assert.deepEqual(await list.locator('.tag').evaluateAll((ts) => ts.map((t) => t.title)),
                       want.map((t) => `${t.tag}: mean probability ${t.probability.toFixed(3)}`), group);
    }
  } else {
    assert.equal(await tagsPanel.isVisible(), false, 'tags without any in the answer');
  }

  const pic = await canvasVariety(page, '#mel');
  assert.equal(pic.width, ans.mel.frames);
  assert.equal(pic.height, ans.mel.bands);
  assert.ok(pic.differ > pic.width * pic.height / 2, `spectrogram nearly blank: ${JSON.stringify(pic)}`);

  /* The embedding: one column per value, blue below zero and red above. */
  const embPanel = page.locator('#embedding-panel');
  if (ans.embedding) {
    assert.equal(await embPanel.isVisible(), true);
    const strip = await page.locator('#embedding').evaluate((c) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, px = [];
      for (let i = 0; i < d.length; i += 4) px.push([d[i], d[i + 1], d[i + 2]]);
      return { width: c.width, height: c.height, px };
    });
    assert.equal(strip.width, ans.embedding.length);
    assert.equal(strip.height, 1);
    const scale = Math.max(...ans.embedding.map(Math.abs));
    ans.embedding.forEach((v, i) => {
      const [r, , b] = strip.px[i];
      if (Math.abs(v) > 0.1 * scale) assert.equal(v < 0, b > r, `embedding column ${i} (${v}): ${strip.px[i]}`);
    });
    assert.match(await page.locator('#embedding-caption').innerText(),
                 new RegExp(`^${ans.embedding.length} values in order`));
  } else {
    assert.equal(await embPanel.isVisible(), false, 'an embedding without one in the answer');
  }
}

/* ---- the tests --------------------------------------------------------------- */

before(async () => {
  makeAudio();
  daemon = await startDaemon(['--max-upload-bytes', String(UPLOAD_LIMIT), '--workers', '1']);
  if (!BACKBONE_SKIP) {
    makeSpeech();
    backbone = await startDaemon(['--workers', '1'], makeBackboneModel());
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS,
                                    timeout: START_TIMEOUT_MS });
}, { timeout: START_TIMEOUT_MS + 2 * FFMPEG_TIMEOUT_MS });

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    for (const f of frontEnds) f.server.closeAllConnections();
    await Promise.all(frontEnds.map((f) => new Promise((r) => f.server.close(r))));
    const codes = [];
    for (const d of daemons) codes.push(await stopDaemon(d));
    fs.rmSync(work, { recursive: true, force: true });
    codes.forEach((code, i) => assert.equal(code, 0, `genred did not exit 0 after SIGTERM ` +
                                            `(null: killed)\n${daemons[i].stderr}`));
  }
});

test('the page and its assets are served with a strict policy', { timeout: TEST_TIMEOUT_MS }, async () => {
  const types = { '/': 'text/html', '/app.js': 'text/javascript', '/style.css': 'text/css' };
  for (const [route, type] of Object.entries(types)) {
    const r = await fetch(daemon.url + route, { signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
    assert.equal(r.status, 200, route);
    assert.equal(r.headers.get('content-type').split(';')[0], type, route);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff', route);
    const csp = r.headers.get('content-security-policy');
    assert.match(csp, /default-src 'none'/, route);
    assert.doesNotMatch(csp, /unsafe|https?:|\*/, route);
    const body = await r.text();
    assert.ok(body.length > 100, route);
    /* No other host is named in any asset: nothing is fetched from a CDN. */
    assert.doesNotMatch(body, /\b(https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}/i, `${route} names another host`);
  }
});

test('a song uploaded from the keyboard shows what the API answers', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { context, page, problems } = await openPage({ viewport: { width: 1280, height: 900 } });
  try {
    /* Record what the progress label says, to see the upload and analysis
     * phases happen. */
    await page.evaluate(() => {
      window.progressSeen = [];
      const label = document.getElementById('progress-label');
      new MutationObserver(() => window.progressSeen.push(label.textContent))
        .observe(label, { childList: true, characterData: true, subtree: true });
    });
    await screenshot(page, 'desktop-start.png');
    assert.equal(await page.locator('footer code').innerText(),
                 `curl -F file=@song.mp3 ${daemon.url}/v1/classify`);

    /* Keyboard only: the first Tab reaches the drop zone, a button by role
     * and name; Enter opens the file chooser. */
    await page.keyboard.press('Tab');
    const drop = page.getByRole('button', { name: 'Choose an audio file' });
    assert.equal(await drop.evaluate((e) => e === document.activeElement), true, 'Tab did not reach the drop zone');
    const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.keyboard.press('Enter')]);
    await chooser.setFiles(audio.song);

    await page.locator('#result').waitFor({ state: 'visible' });
    const want = await classify(audio.song);
    assert.equal(want.status, 200);
    const ans = want.body;
    /* The bundled CNN answers no verdict, tags or embedding: expectShown
     * then checks that their panels stay hidden. */
    for (const key of ['music', 'tags', 'embedding']) assert.equal(key in ans, false, key);
    assert.equal(ans.chunks, 20, 'a 90 s song is trimmed to 60 s, 20 chunks');
    await expectShown(page, ans);
    assert.equal(await page.locator('#timeline .not-music').count(), 0);

    const seen = await page.evaluate(() => window.progressSeen);
    assert.ok(seen.some((t) => t.startsWith('Uploading song.mp3')), `progress: ${seen}`);
    assert.ok(seen.some((t) => t.startsWith('Analysing song.mp3')), `progress: ${seen}`);
    assert.equal(await page.locator('#progress-box').isVisible(), false);
    /* Focus moved to the answer, for keyboard and screen-reader users. */
    assert.equal(await page.evaluate(() => document.activeElement.id), 'result-title');
    await screenshot(page, 'desktop-result.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('refused files show the API\'s own message', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { context, page, problems } = await openPage({ viewport: { width: 1280, height: 900 } });
  try {
    /* Random bytes named .mp3, chosen with Space on the drop zone: 415. */
    const junk = await classify(audio.junk);
    assert.equal(junk.status, 415);
    await page.locator('#drop').focus();
    const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.keyboard.press(' ')]);
    await chooser.setFiles(audio.junk);
    await expectError(page, 415, junk.body.error.code, junk.body.error.message);
    await screenshot(page, 'desktop-error-415.png');

    /* A 2 s WAV dropped on the drop zone: 422. */
    const short = await classify(audio.short);
    assert.equal(short.status, 422);
    const bytes = fs.readFileSync(audio.short).toString('base64');
    const transfer = await page.evaluateHandle((b64) => {
      const raw = atob(b64), data = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) data[i] = raw.charCodeAt(i);
      const dt = new DataTransfer();
      dt.items.add(new File([data], 'short.wav', { type: 'audio/wav' }));
      return dt;
    }, bytes);
    await page.locator('#drop').dispatchEvent('dragenter', { dataTransfer: transfer });
    assert.match(await page.locator('#drop').getAttribute('class'), /dragging/);
    await page.locator('#drop').dispatchEvent('drop', { dataTransfer: transfer });
    await page.locator('#error-message').filter({ hasText: short.body.error.message }).waitFor();
    await expectError(page, 422, short.body.error.code, short.body.error.message);

    /* Over --max-upload-bytes: 413, whether the browser gets to read the
     * answer or the server cuts the upload off first. */
    await page.setInputFiles('#file', audio.huge);
    await page.locator('#error').waitFor({ state: 'visible' });
    const title = await page.locator('#error-title').innerText();
    assert.match(title, /\(413 payload_too_large\)$/);
    assert.match(await page.locator('#error-message').innerText(), /larger than the limit/);

    /* The page still works after all that. */
    await page.setInputFiles('#file', audio.song);
    await page.locator('#result').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#error').isVisible(), false);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('the page fits a phone', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { context, page, problems } = await openPage({ viewport: { width: 390, height: 844 },
                                                       deviceScaleFactor: 2, isMobile: true,
                                                       hasTouch: true });
  try {
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(await overflow() <= 0, 'the start page scrolls sideways');
    await screenshot(page, 'phone-start.png');
    await page.setInputFiles('#file', audio.song);
    await page.locator('#result').waitFor({ state: 'visible' });
    assert.ok(await overflow() <= 0, 'the result scrolls sideways');
    /* Every bar's label and value are on screen, not clipped. */
    for (const box of await page.locator('#bars .bar-value').evaluateAll(
      (vs) => vs.map((v) => v.getBoundingClientRect().right))) assert.ok(box <= 390, `value at ${box}`);
    await screenshot(page, 'phone-result.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('a busy server\'s 503 is shown, and "Try again" then works', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  /* One worker, one chunk per pass, one classification at a time and no
   * queue: while a 10-minute upload (200 chunks) is classified, /readyz says
   * 503 and so must the page's upload. Bounded: at most five tries to hit
   * that window. */
  const busy = await startDaemon(['--workers', '1', '--max-batch', '1',
                                  '--max-active-requests', '1', '--queue-capacity', '0',
                                  '--max-duration-s', '900', '--max-upload-bytes', '32M']);
  const { context, page, problems } = await openPage({ viewport: { width: 1280, height: 900 } }, busy);
  try {
    const queueFull = async () => (await fetch(busy.url + '/readyz')).status === 503;
    let refused = null;
    for (let attempt = 0; attempt < 5 && !refused; attempt++) {
      const hog = classify(audio.long, '?trim=0', busy);
      if (await eventually(queueFull, STEP_TIMEOUT_MS)) {
        const answer = page.waitForResponse((r) => r.url().includes('/v1/classify'));
        await page.setInputFiles('#file', audio.song);
        const resp = await answer;
        t.diagnostic(`upload ${attempt + 1} while the queue was full: ${resp.status()}`);
        if (resp.status() === 503) refused = { body: await resp.json(), retry: resp.headers()['retry-after'] };
        await page.locator('#result:visible, #error:visible').first().waitFor();
      }
      assert.equal((await hog).status, 200);
    }
    assert.ok(refused, 'five uploads in a row were never refused with 503');
    const s = parseInt(refused.retry, 10);
    await expectError(page, 503, refused.body.error.code, refused.body.error.message);
    assert.equal(await page.locator('#error-hint').innerText(),
                 `Please try again in ${s} ${s === 1 ? 'second' : 'seconds'}.`);
    assert.equal(await page.locator('#error-file').innerText(), 'song.mp3');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'retry');
    await screenshot(page, 'desktop-error-503.png');

    /* The queue is free again: "Try again" sends the same file. */
    await page.keyboard.press('Enter');
    await page.locator('#result').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#error').isVisible(), false);
    assert.equal(await page.locator('#timeline .cell').count(), 20);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('with API keys on, the page asks for a key, then works', { timeout: TEST_TIMEOUT_MS }, async () => {
  const KEY = 'web-test-key-0123456789abcdef';
  const keys = path.join(work, 'keys');
  fs.writeFileSync(keys, `${KEY}\n`);
  const keyed = await startDaemon(['--api-keys-file', keys, '--workers', '1']);
  /* The page loads without a key; /v1/model answers 401, so the key field
   * shows and the model line stays empty. */
  const { context, page, problems } = await openPage({ viewport: { width: 1280, height: 900 } }, keyed,
                                                     '#key-form');
  try {
    assert.equal(await page.locator('#model-info').innerText(), '');
    assert.match(await page.locator('footer code').innerText(),
                 /^curl -H 'Authorization: Bearer <key>' -F file=@song\.mp3 http:\/\/127\.0\.0\.1:\d+\/v1\/classify$/);

    /* A wrong key: /v1/model refuses it (the field comes back), and so does
     * an upload, with the API's own message; focus goes to the field. */
    await page.locator('#api-key').fill('wrong-key-0123456789abcdef');
    await page.locator('#key-form').getByRole('button', { name: 'Use key' }).click();
    await page.locator('#key-form').waitFor({ state: 'visible' });
    await page.setInputFiles('#file', audio.song);
    await expectError(page, 401, 'unauthorized', 'the API key is not valid');
    assert.equal(await page.locator('#error-title').innerText(), 'An API key is needed (401 unauthorized)');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'api-key');
    await screenshot(page, 'desktop-api-key.png');

    /* The right key, typed and sent with Enter: the same file goes again,
     * and the page shows what the API answers to a keyed request. */
    await page.keyboard.type(KEY);
    await page.keyboard.press('Enter');
    await page.locator('#result').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#key-form').isVisible(), false);
    assert.equal(await page.locator('#error').isVisible(), false);
    await page.locator('#model-info').filter({ hasText: 'model ' }).waitFor();
    const form = new FormData();
    form.append('file', new Blob([fs.readFileSync(audio.song)]), 'song.mp3');
    const r = await fetch(keyed.url + '/v1/classify' + PAGE_QUERY, {
      method: 'POST', body: form, headers: { Authorization: `Bearer ${KEY}` },
      signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
    assert.equal(r.status, 200);
    const ans = await r.json();
    assert.equal(await page.locator('#top-genre').innerText(), ans.top);
    assert.deepEqual(await page.locator('#bars .bar-value').allInnerTexts(),
                     ans.genres.map((g) => formatPercent(g.percent)));

    /* The key lasts as long as the tab: a reload needs none typed. */
    await page.reload({ waitUntil: 'load' });
    await page.locator('#model-info').filter({ hasText: 'model ' }).waitFor();
    assert.equal(await page.locator('#key-form').isVisible(), false);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

/* ---- the pretrained backbone ------------------------------------------------ */

test('with the backbone, speech then music shows the verdict, the spoken pieces, tags and embedding',
     { timeout: TEST_TIMEOUT_MS, skip: BACKBONE_SKIP }, async () => {
  const { context, page, problems } = await openPage({ viewport: { width: 1280, height: 900 } }, backbone);
  try {
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: backbone.url });
    const asked = page.waitForRequest((r) => r.url().includes('/v1/classify'));
    await page.setInputFiles('#file', audio.mixed);
    assert.equal(new URL((await asked).url()).search, PAGE_QUERY);
    await page.locator('#result').waitFor({ state: 'visible' });
    const want = await classify(audio.mixed, PAGE_QUERY, backbone);
    assert.equal(want.status, 200);
    const ans = want.body;
    /* What this audio is for: both kinds of piece, tags and an embedding. */
    assert.equal(ans.music.verdict, 'mixed', JSON.stringify(ans.music));
    assert.ok(ans.segments.some((s) => s.music) && ans.segments.some((s) => !s.music));
    assert.ok(ans.tags.length > 0, 'no tag for a rock excerpt');
    assert.equal(ans.embedding.length, 384);
    await expectShown(page, ans);
    assert.equal(await page.locator('#timeline .not-music').count(),
                 ans.segments.filter((s) => !s.music).length);
    assert.equal(await page.locator('#legend .swatch.not-music').count(), 1);
    await screenshot(page, 'backbone-desktop-mixed.png');

    /* The copy button puts the answer's very numbers on the clipboard. */
    await page.getByRole('button', { name: 'Copy embedding as JSON' }).click();
    await page.locator('#copy-status').filter({ hasText: 'Copied 384 numbers' }).waitFor();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    assert.deepEqual(JSON.parse(copied), ans.embedding);
    assert.equal(await page.locator('#embedding-json').isVisible(), false);

    /* A browser that lets the page copy nothing: the numbers are shown,
     * selected, for the user to copy. */
    await page.evaluate(() => {
      Object.defineProperty(navigator, 'clipboard', { value: undefined });
      document.execCommand = () => false;
    });
    await page.getByRole('button', { name: 'Copy embedding as JSON' }).click();
    const box = page.getByRole('textbox', { name: 'The embedding as JSON' });
    await box.waitFor({ state: 'visible' });
    assert.deepEqual(JSON.parse(await box.inputValue()), ans.embedding);
    assert.equal(await page.evaluate(() => {
      const t = document.activeElement;
      return t.id === 'embedding-json' && t.selectionStart === 0 && t.selectionEnd === t.value.length;
    }), true, 'the numbers are not selected');
    assert.match(await page.locator('#copy-status').innerText(), /does not let the page copy/);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test('with the backbone, speech says it is not music and names no genre, on a phone',
     { timeout: TEST_TIMEOUT_MS, skip: BACKBONE_SKIP }, async () => {
  const { context, page, problems } = await openPage({ viewport: { width: 390, height: 844 },
                                                       deviceScaleFactor: 2, isMobile: true,
                                                       hasTouch: true }, backbone);
  try {
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.setInputFiles('#file', audio.speech);
    await page.locator('#result').waitFor({ state: 'visible' });
    const speech = await classify(audio.speech, PAGE_QUERY, backbone);
    assert.equal(speech.status, 200);
    assert.equal(speech.body.music.verdict, 'not_music', JSON.stringify(speech.body.music));
    assert.equal(speech.body.top, null);
    await expectShown(page, speech.body);
    assert.equal(await page.locator('#verdict-badge').innerText(), 'Not music');
    assert.match(await page.locator('#verdict-text').innerText(), /no genre is claimed\.$/);
    assert.doesNotMatch(await page.locator('.result-head').innerText(), /Top genre/);
    assert.ok(await overflow() <= 0, 'the "not music" answer scrolls sideways');
    await screenshot(page, 'backbone-phone-not-music.png');

    /* A song next: the title names its genre again. */
    await page.locator('#again').click();
    await page.setInputFiles('#file', audio.song);
    await page.locator('#result').waitFor({ state: 'visible' });
    const song = await classify(audio.song, PAGE_QUERY, backbone);
    assert.equal(song.status, 200);
    assert.equal(song.body.music.verdict, 'music', JSON.stringify(song.body.music));
    await expectShown(page, song.body);
    assert.ok(await overflow() <= 0, 'the backbone\'s answer scrolls sideways');
    for (const right of await page.locator('#tags-panel .tag-value, #bars .bar-value').evaluateAll(
      (vs) => vs.map((v) => v.getBoundingClientRect().right))) assert.ok(right <= 390, `value at ${right}`);
    await screenshot(page, 'backbone-phone-result.png');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});
/* ---- a web front-end of its own origin (CORS) --------------------------------- */

/* A front-end's page: it fetches the song from its own server, posts it to
 * genred (?api=) as a form (a request the browser sends without asking
 * first), as a raw audio/mpeg body with an X-Request-Id (which it must ask
 * leave for: a preflight), or with ?key= as Authorization (a preflight
 * too), and shows the top genre, the API's error, or that the browser
 * refused the answer to the page. */
const FRONT_END_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>front-end</title></head>
<body><p id="out">waiting</p>
<script>
(async () => {
  const q = new URLSearchParams(location.search), out = document.getElementById('out');
  try {
    const song = await (await fetch('/song.mp3')).blob();
    const init = { method: 'POST', headers: {} };
    if (q.get('mode') === 'raw') {
      init.body = song;
      init.headers['Content-Type'] = 'audio/mpeg';
      init.headers['X-Request-Id'] = 'front-end-1';
    } else {
      init.body = new FormData();
      init.body.append('file', song, 'song.mp3');
    }
    if (q.get('key')) init.headers.Authorization = 'Bearer ' + q.get('key');
    const r = await fetch(q.get('api') + '/v1/classify', init);
    const body = await r.json();
    out.dataset.requestId = r.headers.get('X-Request-Id') || '';
    out.textContent = r.ok ? 'top ' + body.top : 'error ' + r.status + ' ' + body.error.code;
  } catch (e) {
    out.textContent = 'refused ' + e.name;
  }
})();
</script></body></html>`;

/* Serves FRONT_END_PAGE and the song on 127.0.0.1, an ephemeral port. */
function startFrontEnd() {
  const server = http.createServer((req, res) => {
    const where = new URL(req.url, 'http://x').pathname;
    if (where === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(FRONT_END_PAGE);
    } else if (where === '/song.mp3') {
      res.writeHead(200, { 'Content-Type': 'audio/mpeg' });
      res.end(fs.readFileSync(audio.song));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  const f = { server, url: null };
  frontEnds.push(f);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      f.url = `http://127.0.0.1:${server.address().port}`;
      resolve(f);
    });
  });
}

/* Opens the front-end's page with query q; resolves to what it shows once
 * it has shown anything but "waiting", and the errors on its console. */
async function frontEndShows(front, q) {
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  try {
    await page.goto(`${front.url}/?${new URLSearchParams(q)}`, { waitUntil: 'load' });
    await page.locator('#out').filter({ hasNotText: 'waiting' }).waitFor();
    return { text: await page.locator('#out').innerText(),
             requestId: await page.locator('#out').getAttribute('data-request-id'), errors };
  } finally {
    await context.close();
  }
}

/* The daemon's request log lines (log_level info) for a route. */
function logged(d, route) {
  return d.stderr.split('\n').filter((l) => l.startsWith('{"event":"request"'))
    .map((l) => JSON.parse(l)).filter((e) => e.route === route);
}

test('a front-end of a listed origin uploads to genred; an unlisted one is refused',
  { timeout: TEST_TIMEOUT_MS }, async () => {
    const listed = await startFrontEnd(), other = await startFrontEnd();
    const KEY = 'cors-test-key-0123456789abcdef';
    const keys = path.join(work, 'cors-keys');
    fs.writeFileSync(keys, `${KEY}\n`);
    const flags = ['--cors-origins', `https://app.example.com, ${listed.url}`, '--workers', '1'];
    const open = await startDaemon(flags);
    const keyed = await startDaemon([...flags, '--api-keys-file', keys]);
    const want = await classify(audio.song, '', open);
    assert.equal(want.status, 200);

    /* A form upload: no preflight; the answer is the page's to read. */
    let shown = await frontEndShows(listed, { api: open.url });
    assert.equal(shown.text, `top ${want.body.top}`);
    assert.match(shown.requestId, /^[0-9a-f]{16}$/, 'X-Request-Id is not exposed to the page');

    /* A raw body with a header of its own: the browser asks first. */
    const before = logged(open, '/v1/classify').filter((e) => e.status === 204).length;
    shown = await frontEndShows(listed, { api: open.url, mode: 'raw' });
    assert.equal(shown.text, `top ${want.body.top}`);
    assert.equal(shown.requestId, 'front-end-1');
    assert.ok(await eventually(async () => logged(open, '/v1/classify')
      .filter((e) => e.status === 204).length === before + 1, STEP_TIMEOUT_MS),
    'no preflight (OPTIONS, 204) reached genred');

    /* With API keys on: the key goes through the preflight as Authorization,
     * and a wrong key's 401 is still the page's to show. */
    shown = await frontEndShows(listed, { api: keyed.url, key: KEY });
    assert.equal(shown.text, `top ${want.body.top}`);
    shown = await frontEndShows(listed, { api: keyed.url, key: 'wrong-key-0123456789abcdef', mode: 'raw' });
    assert.equal(shown.text, 'error 401 unauthorized');

    /* The same page from an origin not listed: the browser refuses the
     * answer (a form) or the request itself (after the preflight). */
    for (const q of [{ api: open.url }, { api: open.url, mode: 'raw' }, { api: keyed.url, key: KEY }]) {
      shown = await frontEndShows(other, q);
      assert.equal(shown.text, 'refused TypeError', JSON.stringify(q));
      assert.ok(shown.errors.some((m) => /CORS policy/.test(m)), shown.errors.join('\n'));
    }
  });
