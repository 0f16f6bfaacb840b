// poolplane status page: follows /events (Server-Sent Events) and draws
// the pools table. Everything is built as DOM nodes with textContent:
// no HTML is ever parsed from data (alert messages may quote SQL).
'use strict';

(function () {
  // An XML namespace name, not an address: nothing is fetched from it.
  const SVG = 'http://www.w3.org/2000/svg';
  const rows = document.getElementById('rows');
  const connection = document.getElementById('connection');
  const summary = document.getElementById('summary');
  const updated = document.getElementById('updated');

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) {
      node.setAttribute(name, String(value));
    }
    return node;
  }

  function cell(field, className, text) {
    const td = el('td', className, text);
    td.dataset.field = field;
    return td;
  }

  function percent(ratio) {
    return Math.round(ratio * 100) + '%';
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    if (seconds < 0.001) return Math.round(seconds * 1e6) + ' µs';
    if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + ' ms';
    return seconds.toFixed(2) + ' s';
  }

  function span(seconds) {
    if (seconds < 90) return Math.round(seconds) + ' s';
    if (seconds < 5400) return Math.round(seconds / 60) + ' min';
    return (seconds / 3600).toFixed(1) + ' h';
  }

  function level(pool) {
    if (pool.utilization >= 1) return 'critical';
    if (pool.utilization > pool.utilization_threshold) return 'warning';
    return 'ok';
  }

  function utilizationBar(pool) {
    const td = cell('utilization', 'utilization');
    const bar = el('div', 'bar ' + level(pool));
    const fill = el('div', 'fill');
    fill.style.width = Math.min(100, Math.max(0, pool.utilization * 100)) + '%';
    bar.appendChild(fill);
    td.appendChild(bar);
    td.appendChild(el('span', 'label', percent(pool.utilization)));
    return td;
  }

  function sparkline(pool) {
    const td = cell('history', 'history');
    const values = pool.utilization_history || [];
    const width = 120;
    const height = 28;
    const chart = svg('svg', {
      width: width, height: height, viewBox: '0 0 ' + width + ' ' + height,
      class: 'sparkline ' + level(pool), role: 'img',
    });
    const title = svg('title', {});
    title.textContent = values.length
      ? 'utilization over the last ' + span(pool.history_seconds) + ' (' + values.length + ' points)'
      : 'no samples yet';
    chart.appendChild(title);
    const y = (ratio) => (height - 2 - Math.min(1, Math.max(0, ratio)) * (height - 4)).toFixed(1);
    chart.appendChild(svg('line', {
      x1: 0, x2: width, y1: y(pool.utilization_threshold), y2: y(pool.utilization_threshold),
      class: 'threshold',
    }));
    if (values.length) {
      const step = values.length > 1 ? width / (values.length - 1) : 0;
      const points = values.map((v, i) => (i * step).toFixed(1) + ',' + y(v));
      if (values.length === 1) points.push(width + ',' + y(values[0]));
      chart.appendChild(svg('polyline', { points: points.join(' '), class: 'line' }));
    }
    td.appendChild(chart);
    return td;
  }

  function alertsCell(pool) {
    const td = cell('alerts', 'alerts');
    if (!pool.alerts_active) {
      td.appendChild(el('span', 'muted', 'none'));
      return td;
    }
    const list = el('ul');
    for (const alert of pool.alerts) {
      const item = el('li', 'alert ' + alert.state);
      item.appendChild(el('span', 'severity ' + alert.severity, alert.severity));
      item.appendChild(el('span', 'message', alert.message));
      item.title = alert.rule + ', ' + alert.state + ' since ' + alert.fired_at;
      list.appendChild(item);
    }
    const hidden = pool.alerts_active - pool.alerts.length;
    if (hidden > 0) {
      list.appendChild(el('li', 'more muted', '+' + hidden + ' more (PoolAdmin/ListAlerts)'));
    }
    td.appendChild(list);
    return td;
  }

  function row(pool) {
    const tr = el('tr');
    tr.dataset.pool = pool.name;
    const name = cell('name', 'name');
    name.appendChild(el('span', null, pool.name));
    if (pool.paused) name.appendChild(el('span', 'tag', 'paused'));
    if (pool.state !== 'serving') name.appendChild(el('span', 'tag', pool.state));
    tr.appendChild(name);
    const health = cell('health');
    health.appendChild(el('span', 'health ' + pool.health, pool.health));
    tr.appendChild(health);
    tr.appendChild(utilizationBar(pool));
    tr.appendChild(cell('active', 'num', pool.active));
    tr.appendChild(cell('idle', 'num', pool.idle));
    tr.appendChild(cell('max', 'num', pool.max));
    tr.appendChild(cell('pending', 'num' + (pool.pending > 0 ? ' waiting' : ''), pool.pending));
    const wait = cell('wait_p99', 'num', duration(pool.acquire_wait_p99_seconds));
    wait.title = pool.acquisitions_in_window + ' acquisitions in the last '
      + span(pool.acquire_wait_window_seconds);
    tr.appendChild(wait);
    tr.appendChild(sparkline(pool));
    tr.appendChild(alertsCell(pool));
    return tr;
  }

  function render(snapshot) {
    const pools = snapshot.pools || [];
    const fresh = pools.map(row);
    if (!fresh.length) {
      const empty = el('tr', 'placeholder');
      const td = el('td', null, 'No pools.');
      td.colSpan = 10;
      empty.appendChild(td);
      fresh.push(empty);
    }
    rows.replaceChildren(...fresh);
    const alerts = pools.reduce((n, p) => n + p.alerts_active, 0);
    summary.textContent = pools.length + (pools.length === 1 ? ' pool' : ' pools')
      + ', ' + alerts + (alerts === 1 ? ' active alert' : ' active alerts');
    updated.textContent = 'updated ' + new Date(snapshot.generated_at).toLocaleTimeString();
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    document.body.dataset.sequence = String(snapshot.sequence);
  }

  function state(name, text) {
    connection.className = 'connection ' + name;
    connection.textContent = text;
  }

  function connect() {
    const source = new EventSource('/events');
    source.addEventListener('status', (event) => {
      try {
        render(JSON.parse(event.data));
        state('live', 'live');
      } catch (error) {
        state('offline', 'bad update: ' + error.message);
      }
    });
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (401 once the page cookie expired, 503 past the client
        // cap): the browser does not retry by itself.
        state('offline', 'offline, retrying');
        setTimeout(connect, 5000);
      } else {
        state('connecting', 'reconnecting');
      }
    });
  }

  connect();
})();
