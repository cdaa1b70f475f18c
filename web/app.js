/* app.js - the genred web page: upload a file, show the answer.
 *
 * One request per file: POST /v1/classify?segments=1&mel=1&embedding=1 with
 * FormData over XMLHttpRequest (fetch reports no upload progress). The
 * answer's `genres` become bars, its `segments` a timeline of coloured cells,
 * its `mel` picture a canvas. A refusal is shown from the API's own error JSON
 * ({"error": {"code", "message"}}) under a heading chosen by status.
 *
 * A model with a pretrained backbone answers more, and the page shows it:
 * `music` (the verdict under the title; for not_music `top` is null and the
 * title says so instead of naming a genre; segments that are not music are
 * hatched cells), `tags` (grouped by instrument, voice and mood) and
 * `embedding` (a strip of its values and a button that copies it as JSON).
 * Each of these stays hidden when the answer lacks the field, as the bundled
 * CNN's does.
 *
 * Text reaches the page only through textContent, never innerHTML, so file
 * names and server messages cannot inject markup; the page's
 * Content-Security-Policy would refuse inline script anyway.
 *
 * API keys: when the server has them, the page itself loads without one,
 * but /v1/model and /v1/classify answer 401. The page then shows a key field;
 * the key goes out as `Authorization: Bearer <key>` and is kept in
 * sessionStorage, so it lasts as long as this tab and no longer.
 *
 * What it does not do: judge files itself (the server decides what it
 * accepts), talk to any other origin, or keep anything between visits. */
'use strict';

(function () {
  const CLASSIFY_URL = '/v1/classify?segments=1&mel=1&embedding=1';
  const UPLOAD_TIMEOUT_MS = 10 * 60 * 1000;

  /* Tableau 10 with its grey swapped for slate (a genre should not look
   * like a missing value): hues told apart also by most colour-blind
   * readers. A model with more genres gets golden-angle hues after these. */
  const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f',
                   '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#3d4a5c'];

  /* Viridis at 0, 0.1, ..., 1: perceptually uniform, readable in grey. */
  const VIRIDIS = ['#440154', '#482475', '#414487', '#355f8d', '#2a788e', '#21918c',
                   '#22a884', '#44bf70', '#7ad151', '#bddf26', '#fde725'];

  /* ColorBrewer RdBu ends and its middle: for the embedding's signed values,
   * blue below zero, red above, near white at zero. */
  const DIVERGING = [[33, 102, 172], [247, 247, 247], [178, 24, 43]];

  /* The verdict's badge; style.css colours it by the verdict (data-verdict). */
  const VERDICTS = {
    music: 'Music',
    mixed: 'Partly music',
    not_music: 'Not music',
  };

  /* Headings for the statuses the API documents (openapi.yaml); the text
   * under a heading is the server's own message. */
  const ERROR_TITLES = {
    400: 'The request was rejected',
    401: 'An API key is needed',
    413: 'This file is too large',
    415: 'This is not a supported audio file',
    422: 'This audio cannot be classified',
    500: 'Something went wrong on the server',
    503: 'The server is busy',
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    file: $('file'), drop: $('drop'), progressBox: $('progress-box'),
    progress: $('progress'), progressLabel: $('progress-label'), cancel: $('cancel'),
    status: $('status'), error: $('error'), errorTitle: $('error-title'),
    errorMessage: $('error-message'), errorHint: $('error-hint'), errorFile: $('error-file'),
    retry: $('retry'), result: $('result'), resultFile: $('result-file'),
    resultTitle: $('result-title'), topGenre: $('top-genre'), resultMeta: $('result-meta'),
    titleGenre: $('title-genre'), titleNotMusic: $('title-not-music'),
    verdict: $('verdict'), verdictBadge: $('verdict-badge'), verdictText: $('verdict-text'),
    bars: $('bars'), genresNote: $('genres-note'), timeline: $('timeline'),
    timelineNote: $('timeline-note'), legend: $('legend'),
    timelineStart: $('timeline-start'), timelineEnd: $('timeline-end'),
    mel: $('mel'), melStart: $('mel-start'), melEnd: $('mel-end'), melCaption: $('mel-caption'),
    again: $('again'), modelInfo: $('model-info'), genreList: $('genre-list'), origin: $('origin'),
    keyForm: $('key-form'), key: $('api-key'), authFlag: $('auth-flag'),
    tagsPanel: $('tags-panel'), embeddingPanel: $('embedding-panel'), embedding: $('embedding'),
    embeddingEnd: $('embedding-end'), embeddingCaption: $('embedding-caption'),
    copyEmbedding: $('copy-embedding'), copyStatus: $('copy-status'),
    embeddingJson: $('embedding-json'), embeddingJsonLabel: $('embedding-json-label'),
  };
  const KEY_STORAGE = 'genred.apiKey';

  let pending = null;  /* the XMLHttpRequest in flight, if any */
  let lastFile = null; /* for "Try again" after a 503 */
  let embedding = null; /* the shown answer's embedding, for the copy button */

  /* ---- small helpers ---------------------------------------------------- */

  function formatTime(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const mm = h ? String(m).padStart(2, '0') : String(m);
    return (h ? h + ':' : '') + mm + ':' + String(r).padStart(2, '0');
  }

  function formatPercent(p) {
    return p.toFixed(1) + '%';
  }

  function plural(n, one, many) {
    return n + ' ' + (n === 1 ? one : many);
  }

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function hiddenText(text) {
    return node('span', 'visually-hidden', text);
  }

  /* names: every genre of the model, sorted, so a genre keeps its colour
   * from one song to the next. */
  function genreColor(genre, names) {
    const i = Math.max(0, names.indexOf(genre));
    if (i < PALETTE.length) return PALETTE[i];
    return 'hsl(' + Math.round((i * 137.508) % 360) + ' 45% 55%)';
  }

  /* The live region announces every phase; `quiet` keeps a message for
   * screen readers only when the page already shows it another way. */
  function setStatus(text, quiet) {
    el.status.textContent = text;
    el.status.classList.toggle('visually-hidden', !!quiet);
  }

  /* ---- the API key ------------------------------------------------------ */

  /* The key in use ('' for none): the tab's stored one at load, the one
   * typed since. Storage can be refused (privacy settings); the key then
   * lasts as long as this page. */
  let apiKey = '';
  try {
    apiKey = sessionStorage.getItem(KEY_STORAGE) || '';
  } catch (e) {
    /* no storage: no key yet */
  }

  function setApiKey(key) {
    apiKey = key;
    try {
      sessionStorage.setItem(KEY_STORAGE, key);
    } catch (e) {
      /* kept for this page only */
    }
  }

  function authorize(xhr) {
    if (apiKey) xhr.setRequestHeader('Authorization', 'Bearer ' + apiKey);
  }

  /* After a 401: the key field, focused unless an error box takes focus. */
  function askForKey(focus) {
    el.keyForm.hidden = false;
    el.authFlag.hidden = false; /* the footer's curl example needs a key too */
    if (focus) el.key.focus();
  }

  el.keyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const key = el.key.value.trim();
    if (!key) return;
    setApiKey(key);
    el.key.value = '';
    el.keyForm.hidden = true;
    loadModelInfo();
    if (lastFile && !busy()) upload(lastFile);
    else el.drop.focus();
  });

  /* ---- choosing a file -------------------------------------------------- */

  function busy() {
    return pending !== null;
  }

  function chooseFile() {
    if (!busy()) el.file.click();
  }

  el.drop.addEventListener('click', chooseFile);
  el.drop.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      chooseFile();
    }
  });
  el.file.addEventListener('change', () => {
    const f = el.file.files && el.file.files[0];
    el.file.value = ''; /* choosing the same file again must fire again */
    if (f) upload(f);
  });

  for (const type of ['dragenter', 'dragover']) {
    el.drop.addEventListener(type, (ev) => {
      ev.preventDefault();
      if (!busy()) el.drop.classList.add('dragging');
    });
  }
  for (const type of ['dragleave', 'dragend']) {
    el.drop.addEventListener(type, () => el.drop.classList.remove('dragging'));
  }
  el.drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    el.drop.classList.remove('dragging');
    const f = ev.dataTransfer && ev.dataTransfer.files[0];
    if (f && !busy()) upload(f);
  });
  /* A file dropped beside the zone must not replace the page. */
  window.addEventListener('dragover', (ev) => ev.preventDefault());
  window.addEventListener('drop', (ev) => ev.preventDefault());

  el.again.addEventListener('click', () => {
    el.result.hidden = true;
    setStatus('');
    el.drop.focus();
  });
  el.cancel.addEventListener('click', () => {
    if (pending) pending.abort();
  });
  el.retry.addEventListener('click', () => {
    if (lastFile && !busy()) upload(lastFile);
  });

  /* ---- the request ------------------------------------------------------ */

  function setBusy(on) {
    el.drop.setAttribute('aria-disabled', on ? 'true' : 'false');
    el.drop.classList.toggle('disabled', on);
    el.progressBox.hidden = !on;
  }

  function upload(file) {
    lastFile = file;
    el.error.hidden = true;
    el.result.hidden = true;
    el.progress.value = 0;
    el.progressLabel.textContent = 'Uploading ' + file.name + '… 0%';
    setStatus('Uploading ' + file.name + '…');
    setBusy(true);

    const form = new FormData();
    form.append('file', file, file.name);
    const xhr = new XMLHttpRequest();
    pending = xhr;
    xhr.open('POST', CLASSIFY_URL);
    authorize(xhr);
    xhr.timeout = UPLOAD_TIMEOUT_MS;
    xhr.upload.addEventListener('progress', (ev) => {
      if (!ev.lengthComputable || ev.total === 0) return;
      const pct = Math.min(100, Math.round((100 * ev.loaded) / ev.total));
      el.progress.value = pct;
      el.progressLabel.textContent = 'Uploading ' + file.name + '… ' + pct + '%';
    });
    xhr.upload.addEventListener('load', () => {
      el.progress.removeAttribute('value'); /* indeterminate while analysing */
      el.progressLabel.textContent = 'Analysing ' + file.name + '…';
      setStatus('Upload complete. Analysing…');
    });
    xhr.addEventListener('load', () => {
      done();
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (e) {
        body = null;
      }
      if (xhr.status === 200 && body && Array.isArray(body.genres)) {
        showResult(body, file.name);
      } else {
        showApiError(file.name, xhr.status, body, xhr.getResponseHeader('Retry-After'));
        if (xhr.status === 401) askForKey(true);
      }
    });
    xhr.addEventListener('error', () => {
      done();
      showError(file.name, 'The upload did not go through',
                'The connection closed before the server answered. The server may be ' +
                'unreachable, or it refused the upload part-way (a file too large ' +
                'for it, for example).');
    });
    xhr.addEventListener('timeout', () => {
      done();
      showError(file.name, 'No answer in time', 'The server did not answer within ' +
                UPLOAD_TIMEOUT_MS / 60000 + ' minutes.');
    });
    xhr.addEventListener('abort', () => {
      done();
      setStatus('Upload cancelled.');
      el.drop.focus();
    });
    xhr.send(form);
  }

  function done() {
    pending = null;
    setBusy(false);
  }

  /* ---- errors ----------------------------------------------------------- */

  function showApiError(fileName, status, body, retryAfter) {
    const err = body && body.error && typeof body.error.message === 'string' ? body.error : null;
    let title = ERROR_TITLES[status] || 'Request refused (HTTP ' + status + ')';
    const message = err ? err.message : 'The server answered HTTP ' + status + ' without an explanation.';
    let hint = '';
    if (status === 503) {
      const s = parseInt(retryAfter, 10);
      hint = Number.isFinite(s) && s > 0
        ? 'Please try again in ' + s + (s === 1 ? ' second.' : ' seconds.')
        : 'Please try again shortly.';
    }
    if (err && err.code) title += ' (' + status + ' ' + err.code + ')';
    showError(fileName, title, message, hint, status === 503);
  }

  function showError(fileName, title, message, hint, canRetry) {
    el.errorTitle.textContent = title;
    el.errorMessage.textContent = message;
    el.errorHint.textContent = hint || '';
    el.errorFile.textContent = fileName;
    el.retry.hidden = !canRetry;
    el.error.hidden = false;
    setStatus('');
    (canRetry ? el.retry : el.drop).focus();
  }

  /* ---- the answer ------------------------------------------------------- */

  function showResult(ans, fileName) {
    const names = ans.genres.map((g) => g.genre).slice().sort();
    const span = ans.analyzed;
    /* The verdict, when the model gives one; a null top is the API's way of
     * saying "no genre" even if a verdict were somehow missing. */
    const music = ans.music && typeof ans.music.verdict === 'string' ? ans.music : null;
    const claimsGenre = typeof ans.top === 'string' && (!music || music.verdict !== 'not_music');

    el.resultFile.textContent = fileName;
    el.titleGenre.hidden = !claimsGenre;
    el.titleNotMusic.hidden = claimsGenre;
    el.topGenre.textContent = claimsGenre ? ans.top : '';
    const parts = [
      formatTime(span.start_s) + '–' + formatTime(span.end_s) + ' of ' +
        formatTime(ans.duration_s) + ' analysed' + (span.trimmed ? ' (intro and outro skipped)' : ''),
      plural(ans.chunks, 'piece', 'pieces'),
      Math.round(ans.timing_ms.total) + ' ms',
      'model ' + ans.model.name + ' ' + ans.model.version,
    ];
    el.resultMeta.textContent = parts.join(' · ');

    showVerdict(music, ans.chunks);
    drawBars(ans.genres, names, music, ans.chunks, claimsGenre);
    drawTimeline(ans.segments || [], ans.genres, names, span);
    drawTags(ans.tags);
    drawMel(ans.mel, span);
    drawEmbedding(ans.embedding);

    el.result.hidden = false;
    setStatus(claimsGenre
      ? 'Done: ' + fileName + ' sounds most like ' + ans.top + '.'
      : 'Done: ' + fileName + ' does not sound like music (speech, silence or noise), ' +
        'so no genre is claimed.', true);
    el.resultTitle.focus();
  }

  /* The music verdict under the title: a badge and how many pieces are
   * music. Hidden for a model without one. */
  function showVerdict(music, chunks) {
    el.verdict.hidden = !music;
    if (!music) return;
    const share = Math.round(100 * music.share) + '%';
    el.verdictBadge.textContent = VERDICTS[music.verdict] || music.verdict;
    el.verdict.dataset.verdict = music.verdict;
    let text = music.chunks + ' of ' + plural(chunks, 'piece', 'pieces') + ' (' + share + ') ' +
      (music.chunks === 1 ? 'sounds' : 'sound') + ' like music';
    if (music.chunks === 0) {
      text = (chunks === 1 ? 'The one piece does' : 'None of the ' + chunks + ' pieces') +
        (chunks === 1 ? ' not sound' : ' sounds') + ' like music: it is speech, silence or ' +
        'noise, so no genre is claimed.';
    } else if (music.verdict === 'music') {
      text += '.';
    } else if (music.verdict === 'mixed') {
      text += '; the rest is speech, silence or noise. The genres count the music pieces only.';
    } else {
      text += ': the rest is speech, silence or noise, so no genre is claimed.';
    }
    el.verdictText.textContent = text;
  }

  /* What the bars count: every piece, or (with a verdict) the music pieces
   * only, all pieces when none is music. Without a claimed genre they are
   * the network's guesses, shown faded and said to be so. */
  function drawBars(genres, names, music, chunks, claimsGenre) {
    const some = music && music.chunks > 0 && music.chunks < chunks;
    let note = some
      ? 'Share of the ' + music.chunks + ' music pieces whose most likely genre it is; ' +
        'pieces that are not music do not count.'
      : 'Share of 3-second pieces whose most likely genre it is.';
    if (!claimsGenre) {
      note = 'No genre is claimed. For reference only: the share of ' +
        (music && music.chunks > 0 ? 'the ' + plural(music.chunks, 'music piece', 'music pieces')
                                   : 'all pieces') +
        ' whose most likely genre it is; the network can only answer with a genre, ' +
        'even for sound that is not music.';
    }
    el.genresNote.textContent = note + ' Hover a bar for the mean probability.';
    el.bars.classList.toggle('guess', !claimsGenre);
    el.bars.replaceChildren();
    for (const g of genres) {
      const li = node('li', 'bar');
      const prob = 'mean probability ' + g.probability.toFixed(3);
      li.title = g.genre + ': ' + formatPercent(g.percent) + ' of pieces, ' + prob;
      li.dataset.genre = g.genre;
      const track = node('span', 'bar-track');
      const fill = node('span', 'bar-fill');
      fill.style.width = Math.max(0, Math.min(100, g.percent)) + '%';
      fill.style.backgroundColor = genreColor(g.genre, names);
      track.appendChild(fill);
      li.append(node('span', 'bar-genre', g.genre), track,
                node('span', 'bar-value', formatPercent(g.percent)), hiddenText(', ' + prob));
      el.bars.appendChild(li);
    }
  }

  /* A piece the verdict judged not music is a hatched cell, not a genre's
   * colour: its genre is only the network's guess. */
  function drawTimeline(segments, genres, names, span) {
    el.timeline.replaceChildren();
    el.legend.replaceChildren();
    const isMusic = (s) => s.music !== false;
    for (const s of segments) {
      const time = formatTime(s.start_s) + '–' + formatTime(s.end_s);
      const label = time + (isMusic(s) ? ' ' + s.top : ' not music');
      const li = node('li', isMusic(s) ? 'cell' : 'cell not-music');
      li.title = label;
      if (isMusic(s)) {
        li.dataset.genre = s.top;
        li.style.backgroundColor = genreColor(s.top, names);
      }
      li.appendChild(hiddenText(label));
      el.timeline.appendChild(li);
    }
    el.timelineStart.textContent = formatTime(span.start_s);
    el.timelineEnd.textContent = formatTime(span.end_s);
    const anyNotMusic = segments.some((s) => !isMusic(s));
    el.timelineNote.textContent = 'The most likely genre of each 3-second piece, in order.' +
      (anyNotMusic ? ' Hatched pieces are not music (speech, silence or noise).' : '');
    const seen = new Set(segments.filter(isMusic).map((s) => s.top));
    for (const g of genres) {
      if (!seen.has(g.genre)) continue;
      const li = node('li', 'legend-item');
      const sw = node('span', 'swatch');
      sw.style.backgroundColor = genreColor(g.genre, names);
      sw.setAttribute('aria-hidden', 'true');
      li.append(sw, node('span', null, g.genre));
      el.legend.appendChild(li);
    }
    if (anyNotMusic) {
      const li = node('li', 'legend-item');
      const sw = node('span', 'swatch not-music');
      sw.setAttribute('aria-hidden', 'true');
      li.append(sw, node('span', null, 'not music'));
      el.legend.appendChild(li);
    }
  }

  /* Tags in their three groups, each strongest first as the API sends
   * them; a group with none says so. Hidden for a model without tags. */
  function drawTags(tags) {
    el.tagsPanel.hidden = !Array.isArray(tags);
    if (!Array.isArray(tags)) return;
    for (const list of el.tagsPanel.querySelectorAll('ul.tags')) {
      list.replaceChildren();
      const mine = tags.filter((t) => t.group === list.dataset.group);
      if (mine.length === 0) list.appendChild(node('li', 'tag-none', 'none clearly heard'));
      for (const t of mine) {
        const li = node('li', 'tag');
        li.title = t.tag + ': mean probability ' + t.probability.toFixed(3);
        const track = node('span', 'tag-track');
        const fill = node('span', 'tag-fill');
        fill.style.width = Math.max(0, Math.min(100, 100 * t.probability)) + '%';
        track.appendChild(fill);
        track.setAttribute('aria-hidden', 'true');
        li.append(node('span', 'tag-name', t.tag), track,
                  node('span', 'tag-value', t.probability.toFixed(2)));
        list.appendChild(li);
      }
    }
  }

  function colormap() {
    const stops = VIRIDIS.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
    const lut = new Uint8ClampedArray(256 * 3);
    for (let v = 0; v < 256; v++) {
      const x = (v / 255) * (stops.length - 1);
      const i = Math.min(stops.length - 2, Math.floor(x)), t = x - i;
      for (let k = 0; k < 3; k++) lut[v * 3 + k] = stops[i][k] + t * (stops[i + 1][k] - stops[i][k]);
    }
    return lut;
  }

  /* The panel is hidden when there is no picture: a model that reads the
   * waveform has no log-mel to show. */
  function drawMel(mel, span) {
    const panel = el.mel.closest('.panel');
    let bytes = null;
    if (mel && typeof mel.data === 'string') {
      try {
        const raw = atob(mel.data);
        bytes = new Uint8Array(raw.length);
        for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
      } catch (e) {
        bytes = null;
      }
    }
    if (!bytes || bytes.length !== mel.bands * mel.frames || bytes.length === 0) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    const w = mel.frames, h = mel.bands;
    el.mel.width = w;
    el.mel.height = h;
    const ctx = el.mel.getContext('2d');
    const img = ctx.createImageData(w, h);
    const lut = colormap();
    for (let r = 0; r < h; r++) {
      const y = h - 1 - r; /* row 0 is the lowest band: draw it at the bottom */
      for (let c = 0; c < w; c++) {
        const v = bytes[r * w + c], o = (y * w + c) * 4;
        img.data[o] = lut[v * 3];
        img.data[o + 1] = lut[v * 3 + 1];
        img.data[o + 2] = lut[v * 3 + 2];
        img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    el.mel.setAttribute('aria-label', 'Mel spectrogram of the analysed audio, ' +
                        formatTime(span.start_s) + ' to ' + formatTime(span.end_s));
    el.melStart.textContent = formatTime(span.start_s);
    el.melEnd.textContent = formatTime(span.end_s);
    el.melCaption.textContent = h + ' mel bands × ' + w + ' columns; dark is ' +
      Math.round(mel.min_db) + ' dB, bright is ' + Math.round(mel.max_db) + ' dB.';
  }

  /* The embedding as a strip, one column per value, on a diverging scale
   * around zero; the copy button gives the very numbers of the answer.
   * Hidden without one. */
  function drawEmbedding(values) {
    const ok = Array.isArray(values) && values.length > 0 &&
      values.every((v) => typeof v === 'number' && Number.isFinite(v));
    el.embeddingPanel.hidden = !ok;
    el.copyStatus.textContent = '';
    el.embeddingJson.hidden = true;
    el.embeddingJsonLabel.hidden = true;
    embedding = ok ? values : null;
    el.embeddingJson.value = ok ? JSON.stringify(values) : '';
    if (!ok) return;
    const n = values.length;
    /* Full colour at 2.5 times the values' RMS: a few strong values would
     * otherwise wash out all the others. */
    const norm = Math.sqrt(values.reduce((a, v) => a + v * v, 0));
    const peak = Math.max(...values.map(Math.abs));
    const scale = Math.min(peak, 2.5 * norm / Math.sqrt(n)) || 1;
    el.embedding.width = n;
    el.embedding.height = 1;
    const ctx = el.embedding.getContext('2d');
    const img = ctx.createImageData(n, 1);
    for (let i = 0; i < n; i++) {
      const x = Math.max(-1, Math.min(1, values[i] / scale));
      const from = DIVERGING[1], to = DIVERGING[x < 0 ? 0 : 2], t = Math.abs(x);
      for (let k = 0; k < 3; k++) img.data[i * 4 + k] = from[k] + t * (to[k] - from[k]);
      img.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    el.embedding.setAttribute('aria-label', 'The embedding: ' + n + ' values from ' +
      Math.min(...values).toFixed(2) + ' to ' + Math.max(...values).toFixed(2));
    el.embeddingEnd.textContent = String(n);
    el.embeddingCaption.textContent = n + ' values in order: blue below zero, red above, ' +
      'white near zero, full colour from ±' + scale.toFixed(2) + ' (the largest is ' +
      peak.toFixed(2) + '). Length (L2 norm) ' + norm.toFixed(2) + '.';
  }

  /* The Clipboard API needs a secure context (https, or this machine);
   * elsewhere the older copy command, and if the browser refuses both, the
   * numbers are shown selected for the user to copy. */
  async function copyEmbedding() {
    if (!embedding) return;
    const json = JSON.stringify(embedding);
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(json);
        copied = true;
      } catch (e) {
        copied = false;
      }
    }
    if (!copied) {
      const scratch = node('textarea', 'visually-hidden');
      scratch.value = json;
      scratch.setAttribute('readonly', '');
      document.body.appendChild(scratch);
      scratch.select();
      try {
        copied = document.execCommand('copy');
      } catch (e) {
        copied = false;
      }
      scratch.remove();
      el.copyEmbedding.focus();
    }
    if (copied) {
      el.copyStatus.textContent = 'Copied ' + embedding.length + ' numbers as a JSON array.';
    } else {
      el.embeddingJsonLabel.hidden = false;
      el.embeddingJson.hidden = false;
      el.embeddingJson.focus();
      el.embeddingJson.select();
      el.copyStatus.textContent = 'This browser does not let the page copy: the numbers ' +
        'are selected below, copy them with Ctrl+C (⌘C on a Mac).';
    }
  }

  el.copyEmbedding.addEventListener('click', copyEmbedding);

  /* ---- what the server knows -------------------------------------------- */

  function loadModelInfo() {
    const model = new XMLHttpRequest();
    model.open('GET', '/v1/model');
    authorize(model);
    model.timeout = 10000;
    model.addEventListener('load', () => {
      if (model.status === 401) {
        askForKey(false);
        return;
      }
      let m = null;
      try {
        m = JSON.parse(model.responseText);
      } catch (e) {
        return;
      }
      if (model.status !== 200 || !m || !Array.isArray(m.genres)) return;
      el.modelInfo.textContent = 'model ' + m.name + ' ' + m.version;
      el.genreList.textContent = 'It knows ' + m.genres.length + ' genres: ' +
        m.genres.join(', ') + '.';
    });
    model.send();
  }

  el.origin.textContent = window.location.origin;
  loadModelInfo();
})();
