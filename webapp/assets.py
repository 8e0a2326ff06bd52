"""CSS and the small browser script of the app (card clicks, keyboard shortcuts, map hover
thumbnails and lasso selection). Everything the script does has a non-script fallback:
the type dropdown, the buttons and the "selected region ids" box."""

import json

CSS = """
.gradio-container {max-width: 1500px !important;}
#pa-header h1 {margin-bottom: 0;}
#pa-header p {margin-top: 2px; color: var(--body-text-color-subdued);}
.pa-cards {display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr));
  gap: 10px; max-height: 72vh; overflow-y: auto; padding: 2px;}
.pa-card {border: 1px solid var(--border-color-primary); border-left: 6px solid var(--pa-type);
  border-radius: 8px; padding: 8px 10px; cursor: pointer; background: var(--background-fill-primary);
  transition: box-shadow .12s;}
.pa-card:hover, .pa-card:focus {box-shadow: 0 0 0 2px var(--pa-type); outline: none;}
.pa-card.pa-selected {box-shadow: 0 0 0 3px var(--pa-type);}
.pa-card-head {display: flex; align-items: center; gap: 6px; font-weight: 600; font-size: 15px;}
.pa-swatch {width: 10px; height: 10px; border-radius: 50%; background: var(--pa-type);}
.pa-name {flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;}
.pa-badge {color: white; font-size: 11px; font-weight: 600; padding: 1px 7px;
  border-radius: 10px; text-transform: uppercase; letter-spacing: .03em;}
.pa-meta {font-size: 12px; color: var(--body-text-color-subdued); margin: 3px 0 6px;}
.pa-thumbs {display: grid; grid-template-columns: repeat(6, 1fr); gap: 3px;}
.pa-thumbs img {width: 100%; aspect-ratio: 1; object-fit: cover; border-radius: 3px;}
.pa-empty {padding: 24px; border: 1px dashed var(--border-color-primary); border-radius: 8px;}
#pa-msg {min-height: 1.6em;}
#pa-msg p, #pa-sugg-msg p, #pa-map-msg p {font-weight: 600;}
.pa-keys kbd {border: 1px solid var(--border-color-primary); border-radius: 4px;
  padding: 0 5px; font-size: 12px; background: var(--background-fill-secondary);}
#pa-question h2, #pa-question h3 {margin: 0 0 4px;}
#pa-hover-thumb {position: fixed; z-index: 1000; pointer-events: none; display: none;
  border: 2px solid white; box-shadow: 0 2px 8px rgba(0,0,0,.35); border-radius: 4px;
  width: 128px; height: 128px; background: #222;}
.pa-hidden {display: none !important;}
#pa-up-report {min-height: 140px;}
.pa-card-tools {display: flex; gap: 6px; margin: 0 0 8px; flex-wrap: wrap;}
.pa-card-tools input {flex: 1 1 160px; min-width: 120px;}
.pa-card-tools input, .pa-card-tools select {padding: 4px 6px; font-size: 13px;
  border: 1px solid var(--border-color-primary); border-radius: 6px;
  background: var(--input-background-fill); color: var(--body-text-color);}
#pa-help {position: fixed; top: 10%; left: 50%; transform: translateX(-50%); z-index: 1000;
  background: var(--background-fill-primary); color: var(--body-text-color);
  border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 20px;
  box-shadow: 0 8px 30px rgba(0,0,0,.3); max-width: 560px;}
#pa-help td, #pa-help th {padding: 2px 10px; text-align: left;}
.pa-count {font-size: 13px; margin: 2px 0 6px; color: var(--body-text-color-subdued);}
.pa-members {display: grid; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr));
  gap: 6px; max-height: 430px; overflow-y: auto; padding: 2px; user-select: none;}
.pa-member {margin: 0; position: relative; cursor: pointer; border-radius: 6px;
  border: 3px solid transparent; background: var(--background-fill-secondary);}
.pa-member img {width: 100%; aspect-ratio: 1; object-fit: cover; display: block;
  border-radius: 3px;}
.pa-member figcaption {font-size: 11px; text-align: center; padding: 1px 0;
  color: var(--body-text-color-subdued);}
.pa-member:hover, .pa-member:focus {border-color: var(--color-accent-soft); outline: none;}
.pa-member.pa-on {border-color: var(--color-accent);}
.pa-member.pa-on::after {content: "✓"; position: absolute; top: 4px; right: 4px; width: 20px;
  height: 20px; border-radius: 50%; background: var(--color-accent); color: white;
  font-size: 13px; line-height: 20px; text-align: center; font-weight: 700;}
#pa-viewer .pa-vtools {display: flex; flex-wrap: wrap; gap: 14px; align-items: center;
  font-size: 13px; margin: 0 0 6px;}
#pa-viewer .pa-vtools button {border: 1px solid var(--border-color-primary); border-radius: 5px;
  padding: 0 8px; margin: 0 2px; background: var(--background-fill-secondary);
  color: var(--body-text-color);}
#pa-viewer .pa-v-level {display: inline-block; min-width: 52px; text-align: center;}
#pa-viewer .pa-v-size {color: var(--body-text-color-subdued);}
#pa-viewer .pa-vstage {position: relative; overflow: hidden; height: 58vh; min-height: 240px;
  background: repeating-conic-gradient(#2a2a2a 0 25%, #333 0 50%) 0 0 / 20px 20px;
  border-radius: 8px; cursor: grab; touch-action: none;}
#pa-viewer .pa-vstage.pa-dragging {cursor: grabbing;}
#pa-viewer .pa-vstage:focus {outline: 2px solid var(--color-accent);}
#pa-viewer .pa-vlayers {position: absolute; left: 0; top: 0; transform-origin: 0 0;}
#pa-viewer .pa-vlayers img {position: absolute; left: 0; top: 0; width: 100%; height: 100%;
  max-width: none; user-select: none; -webkit-user-drag: none; pointer-events: none;}
#pa-viewer .pa-vlayers.pa-pixelated img {image-rendering: pixelated;}
#pa-viewer kbd, #pa-help kbd {border: 1px solid var(--border-color-primary); border-radius: 4px;
  padding: 0 5px; font-size: 12px; background: var(--background-fill-secondary);}
#pa-help {box-shadow: 0 0 0 100vmax rgba(0,0,0,.35), 0 8px 30px rgba(0,0,0,.3);}
#pa-help td:first-child {white-space: nowrap;}
#pa-history td {word-break: normal; overflow-wrap: anywhere;}
#pa-ws {align-items: center; gap: 6px; margin-top: 10px;}
.pa-actions {gap: 6px; align-items: center;}
.pa-actions button {min-height: 36px;}
#pa-type-head p {margin: 2px 0;}
#pa-enlarge {position: fixed; z-index: 1001; pointer-events: none; display: none;
  width: 320px; height: 320px; object-fit: contain; border: 2px solid white; border-radius: 4px;
  box-shadow: 0 4px 16px rgba(0,0,0,.4); background: #222;}
"""

HEAD = """
<script>
(() => {
  if (window.__protoatlas) return;
  window.__protoatlas = true;
  function setBox(id, value) {
    const el = document.querySelector('#' + id + ' textarea, #' + id + ' input');
    if (!el) return false;
    el.value = value;
    el.dispatchEvent(new Event('input', {bubbles: true}));
    return true;
  }
  window.paSetBox = setBox;
  // the browser's time zone, for times shown in the reviewer's local time (History)
  const tzTimer = setInterval(() => {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || '';
    if (setBox('pa-tz', zone)) clearInterval(tzTimer);
  }, 300);
  function pickCard(card) {
    setBox('pa-type-pick', card.dataset.typeId + ':' + Date.now());
  }
  // Members grid: click toggles, shift-click selects a range, double-click opens the image.
  let anchor = null;
  function members() { return Array.from(document.querySelectorAll('#pa-gallery .pa-member')); }
  function syncSelection() {
    // members selected but not on this page (after "Select all") stay selected
    const shown = new Set(members().map(m => m.dataset.rid));
    const box = document.querySelector('#pa-selection textarea, #pa-selection input');
    const hidden = (box ? box.value : '').split(',').map(s => s.trim())
      .filter(s => s && !shown.has(s));
    const ids = members().filter(m => m.classList.contains('pa-on')).map(m => m.dataset.rid);
    setBox('pa-selection', hidden.concat(ids).join(', '));
  }
  window.paSelectAll = (on) => {
    members().forEach(m => m.classList.toggle('pa-on', on));
    if (!on) setBox('pa-selection', '');
    syncSelection();
    return [];
  };
  function toggleMember(fig, shift) {
    const all = members();
    if (shift && anchor && all.includes(anchor)) {
      const [a, b] = [all.indexOf(anchor), all.indexOf(fig)].sort((x, y) => x - y);
      all.slice(a, b + 1).forEach(m => m.classList.add('pa-on'));
    } else {
      fig.classList.toggle('pa-on');
      anchor = fig;
    }
    syncSelection();
  }
  function togglePick(fig) {
    fig.classList.toggle('pa-on');
    const ids = Array.from(document.querySelectorAll('#pa-sugg-grid .pa-member.pa-on'))
      .map(m => m.dataset.rid);
    setBox('pa-sugg-pick', ids.join(', '));
  }
  document.addEventListener('click', (ev) => {
    const card = ev.target.closest && ev.target.closest('.pa-card');
    if (card) { pickCard(card); return; }
    const pick = ev.target.closest && ev.target.closest('#pa-sugg-grid .pa-pickable .pa-member');
    if (pick) { togglePick(pick); return; }
    const img = ev.target.closest && ev.target.closest('#pa-browse-grid .pa-image');
    if (img) { setBox('pa-browse-open', img.dataset.iid + ':' + Date.now()); return; }
    const fig = ev.target.closest && ev.target.closest('#pa-gallery .pa-member');
    if (fig) toggleMember(fig, ev.shiftKey);
  });
  document.addEventListener('dblclick', (ev) => {
    const fig = ev.target.closest && ev.target.closest('#pa-gallery .pa-member');
    if (fig) {
      fig.classList.add('pa-on'); syncSelection();
      setBox('pa-open-box', fig.dataset.rid + ':' + Date.now());
    }
  });
  // Image viewer: zoom (wheel, + - 0 1, buttons), pan (drag), layer toggles and opacity;
  // the choices of layers and opacity stay from one image to the next.
  const viewPrefs = {heat: true, outline: true, opacity: 60};
  const view = {s: 1, x: 0, y: 0, fitS: 1, drag: null};
  function viewer() {
    const v = document.querySelector('#pa-viewer .pa-viewer');
    return v && v.offsetParent !== null ? v : null;
  }
  function applyView(v) {
    const layers = v.querySelector('.pa-vlayers');
    layers.style.transform = 'translate(' + view.x + 'px,' + view.y + 'px) scale(' + view.s + ')';
    layers.classList.toggle('pa-pixelated', view.s >= 2);
    const level = v.querySelector('.pa-v-level');
    if (level) level.textContent = Math.round(view.s * 100) + ' %';
    const op = viewPrefs.opacity / 100;
    v.querySelector('.pa-v-heatimg').style.opacity = viewPrefs.heat ? op : 0;
    v.querySelector('.pa-v-outlineimg').style.opacity = viewPrefs.outline ? 1 : 0;
    v.querySelector('.pa-v-heat').checked = viewPrefs.heat;
    v.querySelector('.pa-v-outline').checked = viewPrefs.outline;
    v.querySelector('.pa-v-opacity').value = viewPrefs.opacity;
    v.dataset.zoom = view.s.toFixed(4);
  }
  function sizeStage(v) {  // the stage fills the window below its top (no page scroll)
    const stage = v.querySelector('.pa-vstage');
    const top = stage.getBoundingClientRect().top + window.scrollY;
    stage.style.height = Math.max(240, window.innerHeight - top - 12) + 'px';
  }
  function fitView(v) {
    const st = v.querySelector('.pa-vstage').getBoundingClientRect();
    const w = Number(v.dataset.w), h = Number(v.dataset.h);
    view.fitS = Math.min(st.width / w, st.height / h);
    view.s = view.fitS;
    view.x = (st.width - w * view.s) / 2;
    view.y = (st.height - h * view.s) / 2;
    applyView(v);
  }
  function zoomView(v, factor, cx, cy) {
    const st = v.querySelector('.pa-vstage').getBoundingClientRect();
    if (cx === undefined) { cx = st.width / 2; cy = st.height / 2; }
    const s = Math.min(Math.max(view.s * factor, Math.min(view.fitS / 4, 1)), 32);
    view.x = cx - (cx - view.x) * (s / view.s);
    view.y = cy - (cy - view.y) * (s / view.s);
    view.s = s;
    applyView(v);
  }
  function zoomTo(v, what) {
    if (what === 'fit') fitView(v);
    else if (what === 'in') zoomView(v, 1.5);
    else if (what === 'out') zoomView(v, 1 / 1.5);
    else if (what === '1') zoomView(v, 1 / view.s);
  }
  setInterval(() => {  // a new image in the viewer: fit it once it is shown
    const v = viewer();
    if (v && !v.dataset.bound) { v.dataset.bound = '1'; sizeStage(v); fitView(v); }
  }, 120);
  document.addEventListener('wheel', (ev) => {
    const st = ev.target.closest && ev.target.closest('#pa-viewer .pa-vstage');
    if (!st) return;
    ev.preventDefault();
    const r = st.getBoundingClientRect();
    zoomView(st.closest('.pa-viewer'), ev.deltaY < 0 ? 1.25 : 1 / 1.25,
      ev.clientX - r.left, ev.clientY - r.top);
  }, {passive: false});
  document.addEventListener('mousedown', (ev) => {
    const st = ev.target.closest && ev.target.closest('#pa-viewer .pa-vstage');
    if (!st || ev.button !== 0) return;
    view.drag = {x: ev.clientX - view.x, y: ev.clientY - view.y, st: st};
    st.classList.add('pa-dragging'); st.focus(); ev.preventDefault();
  });
  window.addEventListener('mousemove', (ev) => {
    if (!view.drag) return;
    view.x = ev.clientX - view.drag.x; view.y = ev.clientY - view.drag.y;
    applyView(view.drag.st.closest('.pa-viewer'));
  });
  window.addEventListener('mouseup', () => {
    if (view.drag) view.drag.st.classList.remove('pa-dragging');
    view.drag = null;
  });
  function viewerInput(ev) {
    const t = ev.target, v = t && t.closest && t.closest('#pa-viewer .pa-viewer');
    if (!v) return false;
    if (t.classList.contains('pa-v-heat')) viewPrefs.heat = t.checked;
    else if (t.classList.contains('pa-v-outline')) viewPrefs.outline = t.checked;
    else if (t.classList.contains('pa-v-opacity')) viewPrefs.opacity = Number(t.value);
    else return false;
    applyView(v);
    return true;
  }
  document.addEventListener('input', viewerInput);
  document.addEventListener('change', viewerInput);
  document.addEventListener('click', (ev) => {
    const b = ev.target.closest && ev.target.closest('#pa-viewer [data-zoom]');
    if (b) zoomTo(b.closest('.pa-viewer'), b.dataset.zoom);
  });
  function viewerKey(ev) {  // true when the key was the viewer's
    const v = viewer();
    if (!v) return false;
    const k = ev.key;
    const press = (id) => { const b = document.getElementById(id); if (b) b.click(); };
    if (k === '+' || k === '=') zoomTo(v, 'in');
    else if (k === '-' || k === '_') zoomTo(v, 'out');
    else if (k === '0') zoomTo(v, 'fit');
    else if (k === '1') zoomTo(v, '1');
    else if (k === 'h') { viewPrefs.heat = !viewPrefs.heat; applyView(v); }
    else if (k === 'o') { viewPrefs.outline = !viewPrefs.outline; applyView(v); }
    else if (k === 'n' || k === 'ArrowRight') press('pa-img-next');
    else if (k === 'p' || k === 'ArrowLeft') press('pa-img-prev');
    else return false;
    return true;
  }
  // Hover to enlarge: a member crop or a Browse image, bigger, beside the pointer.
  let enlarge = null, enlargeTimer = null;
  const GRID_IMAGES = '#pa-gallery .pa-member, #pa-sugg-grid .pa-member, ' +
    '#pa-browse-grid .pa-image';
  document.addEventListener('mouseover', (ev) => {
    const fig = ev.target.closest && ev.target.closest(GRID_IMAGES);
    if (!fig) return;
    clearTimeout(enlargeTimer);
    enlargeTimer = setTimeout(() => {
      if (!enlarge) {
        enlarge = document.createElement('img');
        enlarge.id = 'pa-enlarge';
        document.body.appendChild(enlarge);
      }
      enlarge.src = fig.dataset.iid ? 'pa/full/' + fig.dataset.iid + '.jpg'
        : 'pa/crop/' + fig.dataset.rid + '.jpg';
      const r = fig.getBoundingClientRect();
      const left = r.right + 340 < window.innerWidth ? r.right + 8 : Math.max(r.left - 332, 0);
      enlarge.style.left = left + 'px';
      const top = r.top + r.height / 2 - 162;
      enlarge.style.top = Math.min(Math.max(top, 4), window.innerHeight - 328) + 'px';
      enlarge.style.display = 'block';
    }, 350);
  });
  document.addEventListener('mouseout', (ev) => {
    const fig = ev.target.closest && ev.target.closest(GRID_IMAGES);
    if (!fig || (ev.relatedTarget && fig.contains(ev.relatedTarget))) return;
    clearTimeout(enlargeTimer);
    if (enlarge) enlarge.style.display = 'none';
  });
  // Type cards: find, sort and filter on the page (state kept across re-renders).
  const cardState = {q: '', sort: 'size', status: ''};
  function applyCards() {
    const box = document.querySelector('#pa-cards .pa-cards');
    if (!box) return;
    const tools = document.querySelector('#pa-cards .pa-card-tools');
    if (tools) {
      const f = tools.querySelector('.pa-find'), s = tools.querySelector('.pa-sort'),
        st = tools.querySelector('.pa-status');
      if (f && f.value !== cardState.q && document.activeElement !== f) f.value = cardState.q;
      if (s && s.value !== cardState.sort) s.value = cardState.sort;
      if (st && st.value !== cardState.status) st.value = cardState.status;
    }
    const cards = Array.from(box.querySelectorAll('.pa-card'));
    const key = {
      size: c => -Number(c.dataset.size), conf: c => Number(c.dataset.conf),
      name: c => c.dataset.name, status: c => c.dataset.status + ':' + c.dataset.name,
    }[cardState.sort] || (c => -Number(c.dataset.size));
    const order = cards.slice().sort((a, b) => {
      const x = key(a), y = key(b); return x < y ? -1 : x > y ? 1 : 0;
    });
    order.forEach((c, i) => {
      const hit = (!cardState.q || c.dataset.name.includes(cardState.q.toLowerCase())) &&
        (!cardState.status || c.dataset.status === cardState.status);
      if (c.style.order !== String(i)) c.style.order = String(i);
      if (c.style.display !== (hit ? '' : 'none')) c.style.display = hit ? '' : 'none';
    });
  }
  window.paApplyCards = applyCards;
  document.addEventListener('input', (ev) => {
    const t = ev.target;
    if (!t || !t.closest || !t.closest('.pa-card-tools')) return;
    if (t.classList.contains('pa-find')) cardState.q = t.value;
    if (t.classList.contains('pa-sort')) cardState.sort = t.value;
    if (t.classList.contains('pa-status')) cardState.status = t.value;
    applyCards();
  });
  let lastCards = null;
  setInterval(() => {  // a re-render of the cards: apply the find / sort / filter again
    const box = document.querySelector('#pa-cards .pa-cards');
    const stamp = box && box.dataset.rendered;
    if (stamp && stamp !== lastCards) { lastCards = stamp; applyCards(); }
  }, 150);
  function visibleCards() {
    return Array.from(document.querySelectorAll('#pa-cards .pa-card'))
      .filter(c => c.style.display !== 'none')
      .sort((a, b) => Number(a.style.order || 0) - Number(b.style.order || 0));
  }
  function stepCard(delta) {
    const cards = visibleCards();
    if (!cards.length) return;
    const at = cards.findIndex(c => c.classList.contains('pa-selected'));
    const next = cards[Math.min(Math.max(at + delta, 0), cards.length - 1)];
    next.focus(); pickCard(next);
  }
  // Types tab keys; "?" shows every key of the page.
  const TYPE_KEYS = {c: 'pa-confirm', x: 'pa-reject', a: 'pa-sel-all', z: 'pa-undo'};
  function toggleHelp() {
    let help = document.getElementById('pa-help');
    if (help) { help.remove(); return; }
    help = document.createElement('div');
    help.id = 'pa-help';
    help.innerHTML = window.PA_KEYS_HELP || '';
    help.addEventListener('click', () => help.remove());
    document.body.appendChild(help);
  }
  const KEYS = {y: 'pa-yes', n: 'pa-no', s: 'pa-skip', u: 'pa-sugg-undo'};
  document.addEventListener('keydown', (ev) => {
    const t = ev.target;
    if ((ev.key === 'Enter' || ev.key === ' ') && t && t.classList) {
      if (t.classList.contains('pa-card')) { pickCard(t); ev.preventDefault(); return; }
      if (t.classList.contains('pa-member')) { toggleMember(t, ev.shiftKey); ev.preventDefault(); return; }
    }
    if (t && t.classList && t.classList.contains('pa-member') && ev.key.startsWith('Arrow')) {
      // arrows move the focus through a grid: across a row, or to the one above / below
      const grid = Array.from(t.parentElement.children);
      const at = grid.indexOf(t);
      const perRow = grid.filter(m => m.offsetTop === grid[0].offsetTop).length || 1;
      const step = {ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow}[ev.key];
      const next = grid[Math.min(Math.max(at + step, 0), grid.length - 1)];
      if (next) { next.focus(); ev.preventDefault(); }
      return;
    }
    const tag = (t && t.tagName || '').toLowerCase();
    if (['input', 'textarea', 'select'].includes(tag) || (t && t.isContentEditable)) {
      if (ev.key === 'Escape' && t.blur) t.blur();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === '?') { toggleHelp(); ev.preventDefault(); return; }
    if (ev.key === 'Escape') { const h = document.getElementById('pa-help'); if (h) h.remove(); }
    if (viewerKey(ev)) { ev.preventDefault(); return; }
    const cardsPanel = document.getElementById('pa-cards');
    if (cardsPanel && cardsPanel.offsetParent !== null) {  // the Types tab is shown
      const k = (ev.key || '').toLowerCase();
      if (k === 'j' || k === 'k') { stepCard(k === 'j' ? 1 : -1); ev.preventDefault(); return; }
      if (ev.key === '/') {
        const f = document.querySelector('#pa-cards .pa-find');
        if (f) { f.focus(); ev.preventDefault(); }
        return;
      }
      const tb = TYPE_KEYS[k] && document.getElementById(TYPE_KEYS[k]);
      if (tb && tb.offsetParent !== null) { tb.click(); ev.preventDefault(); return; }
    }
    const panel = document.getElementById('pa-suggest-panel');
    if (!panel || panel.offsetParent === null) return;   // the Suggestions tab is not shown
    const id = KEYS[(ev.key || '').toLowerCase()];
    const button = id && document.getElementById(id);
    // only what the question offers: a hidden button (yes / no on a label question) is inert
    if (button && button.offsetParent !== null) { button.click(); ev.preventDefault(); }
  });
  // Map: thumbnails on hover, lasso/box selection -> "selected region ids".
  let tip = null;
  function onSelected(ev) {
    const ids = (ev && ev.points ? ev.points : []).map(p => p.customdata && p.customdata[0])
      .filter(v => v !== undefined && v !== null);
    setBox('pa-map-pick', ids.join(', '));
  }
  function onHover(ev) {
    const p = ev && ev.points && ev.points[0];
    if (!p || !p.customdata) return;
    if (!tip) {
      tip = document.createElement('img');
      tip.id = 'pa-hover-thumb';
      document.body.appendChild(tip);
    }
    tip.src = 'pa/thumb/' + p.customdata[0] + '.jpg';
    const e = ev.event || {};
    tip.style.left = ((e.clientX || 0) + 16) + 'px';
    tip.style.top = ((e.clientY || 0) - 64) + 'px';
    tip.style.display = 'block';
  }
  function onUnhover() { if (tip) tip.style.display = 'none'; }
  setInterval(() => {
    document.querySelectorAll('#pa-map .js-plotly-plot').forEach((gd) => {
      if (typeof gd.on !== 'function') return;
      const ev = gd._ev;
      if (ev && ev.listeners && ev.listeners('plotly_selected').includes(onSelected)) return;
      gd.on('plotly_selected', onSelected);
      gd.on('plotly_hover', onHover);
      gd.on('plotly_unhover', onUnhover);
    });
  }, 600);
})();
</script>
"""

KEYS_HELP = (
    "<span class='pa-keys'>Keys: <kbd>y</kbd> yes · <kbd>n</kbd> no · <kbd>s</kbd> skip · "
    "<kbd>u</kbd> undo · <kbd>?</kbd> every key</span>"
)
#: The "?" overlay: every key of the page.
ALL_KEYS_HELP = (
    "<h3>Keys</h3><table>"
    "<tr><th colspan=2>Types</th></tr>"
    "<tr><td><kbd>j</kbd> / <kbd>k</kbd></td><td>next / previous type</td></tr>"
    "<tr><td><kbd>c</kbd></td><td>confirm the type</td></tr>"
    "<tr><td><kbd>x</kbd></td><td>reject the type</td></tr>"
    "<tr><td><kbd>a</kbd></td><td>select all its members</td></tr>"
    "<tr><td><kbd>z</kbd></td><td>undo your last action</td></tr>"
    "<tr><td><kbd>/</kbd></td><td>find a type by name (<kbd>Esc</kbd> leaves the box)</td></tr>"
    "<tr><td><kbd>Tab</kbd>, <kbd>Space</kbd> / <kbd>Enter</kbd></td>"
    "<td>move through cards and members; pick one; shift-click: a range</td></tr>"
    "<tr><td><kbd>←</kbd> <kbd>→</kbd> <kbd>↑</kbd> <kbd>↓</kbd></td>"
    "<td>move the focus through the members grid</td></tr>"
    "<tr><th colspan=2>Image</th></tr>"
    "<tr><td><kbd>n</kbd> / <kbd>p</kbd> (or <kbd>→</kbd> / <kbd>←</kbd>)</td>"
    "<td>next / previous image</td></tr>"
    "<tr><td><kbd>+</kbd> / <kbd>-</kbd> / <kbd>0</kbd> / <kbd>1</kbd></td>"
    "<td>zoom in / out / fit / full resolution (wheel: zoom, drag: pan)</td></tr>"
    "<tr><td><kbd>h</kbd> / <kbd>o</kbd></td><td>heat map / region outlines on or off</td></tr>"
    "<tr><th colspan=2>Suggestions</th></tr>"
    "<tr><td><kbd>y</kbd> / <kbd>n</kbd> / <kbd>s</kbd></td><td>yes / no / skip</td></tr>"
    "<tr><td><kbd>u</kbd></td><td>undo your last action</td></tr>"
    "<tr><td><kbd>?</kbd></td><td>this help (a click or <kbd>Esc</kbd> closes it)</td></tr>"
    "</table>"
)

# the "?" overlay's text, for the page script
HEAD += "<script>window.PA_KEYS_HELP = " + json.dumps(ALL_KEYS_HELP) + ";</script>\n"
