// Herald's dashboard: signs in through Herald, reads the dashboard's JSON
// routes, and refetches them when the SSE stream says the log moved.
'use strict';

(() => {
  const TOKEN = 'herald.dashboard.token';
  const ROLE = 'herald.dashboard.role';
  /** Wait after a stream event before refetching, so a burst is one fetch. */
  const THROTTLE_MS = 100;
  /** Wait before asking again when a read model is behind the stream. */
  const CHASE_MS = 150;
  /** Refetch this often anyway: time windows move and ages grow. */
  const PERIOD_MS = 10000;

  const $ = (selector) => document.querySelector(selector);
  const charts = {};
  let wanted = 0; // the highest log position the stream has told of
  let timer = null;
  let busy = false;
  let again = false;
  let stream = null;
  let ticker = null;

  const token = () => sessionStorage.getItem(TOKEN);
  const role = () => sessionStorage.getItem(ROLE);
  const isAdmin = () => role() === 'admin';

  function figure(name, value) {
    const element = document.querySelector(`[data-figure="${name}"]`);
    if (element) element.textContent = String(value);
    return element;
  }

  /** Minor units as major ones with two decimals, in integer arithmetic. */
  function money(minor, currency) {
    const sign = minor < 0 ? '-' : '';
    const abs = Math.abs(minor);
    const cents = String(abs % 100).padStart(2, '0');
    return `${sign}${Math.floor(abs / 100)}.${cents} ${currency}`;
  }

  /** The log position an answer is as of: the number its ETag starts with. */
  function positionOf(response) {
    const match = /^(?:W\/)?"(\d+)-/.exec(response.headers.get('ETag') || '');
    return match ? Number(match[1]) : null;
  }

  class SignedOut extends Error {}

  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), Authorization: `Bearer ${token()}` },
    });
    if (response.status === 401) {
      signOut('Your session has ended; sign in again.');
      throw new SignedOut();
    }
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(problem.detail || `${path}: ${response.status}`);
    }
    return { body: await response.json(), position: positionOf(response) };
  }

  function chart(id) {
    if (!charts[id]) charts[id] = echarts.init(document.getElementById(id));
    return charts[id];
  }

  const hourLabel = (start) => start.slice(11, 16);
  const dayLabel = (start) => start.slice(5, 10);

  function definitions(container, prefix, entries, format = (v) => String(v)) {
    const list = $(container);
    list.replaceChildren();
    for (const [name, value, raw] of entries) {
      const item = document.createElement('div');
      const term = document.createElement('dt');
      term.textContent = name;
      const detail = document.createElement('dd');
      detail.dataset.figure = `${prefix}.${name}`;
      if (raw !== undefined) detail.dataset.minor = String(raw);
      detail.textContent = format(value);
      item.append(term, detail);
      list.append(item);
    }
  }

  function statusBars(id, byStatus) {
    const names = Object.keys(byStatus);
    chart(id).setOption({
      grid: { left: 40, right: 10, top: 10, bottom: 30 },
      tooltip: {},
      xAxis: { type: 'category', data: names },
      yAxis: { type: 'value', minInterval: 1 },
      series: [{ type: 'bar', data: names.map((n) => byStatus[n]) }],
    });
  }

  function renderSummary(summary) {
    definitions('#bookings-by-status', 'bookings', Object.entries(summary.bookings_by_status));
    definitions('#payments-by-status', 'payments', Object.entries(summary.payments_by_status));
    statusBars('chart-bookings-status', summary.bookings_by_status);
    statusBars('chart-payments-status', summary.payments_by_status);
    definitions(
      '#revenue',
      'revenue',
      summary.revenue.map((r) => [r.currency, money(r.amount_minor, r.currency), r.amount_minor]),
      (v) => v,
    );
  }

  function bookingLines(id, buckets, label, type) {
    const series = ['booked', 'completed', 'cancelled'].map((name) => ({
      name,
      type,
      data: buckets.map((b) => b[name]),
    }));
    chart(id).setOption({
      grid: { left: 40, right: 10, top: 30, bottom: 30 },
      legend: { top: 0 },
      tooltip: { trigger: 'axis' },
      xAxis: { type: 'category', data: buckets.map((b) => label(b.start)) },
      yAxis: { type: 'value', minInterval: 1 },
      series,
    });
  }

  function renderActivity(activity) {
    const hour = activity.bookings_per_hour[activity.bookings_per_hour.length - 1];
    const day = activity.bookings_per_day[activity.bookings_per_day.length - 1];
    for (const name of ['booked', 'completed', 'cancelled']) {
      figure(`hour.${name}`, hour[name]);
      figure(`today.${name}`, day[name]);
    }
    bookingLines('chart-bookings-hour', activity.bookings_per_hour, hourLabel, 'line');
    bookingLines('chart-bookings-day', activity.bookings_per_day, dayLabel, 'bar');

    const days = activity.bookings_per_day.map((b) => b.start);
    const currencies = [...new Set(activity.revenue_per_day.map((r) => r.currency))];
    chart('chart-revenue-day').setOption({
      grid: { left: 60, right: 10, top: 30, bottom: 30 },
      legend: { top: 0 },
      tooltip: { trigger: 'axis' },
      xAxis: { type: 'category', data: days.map(dayLabel) },
      yAxis: { type: 'value' },
      series: currencies.map((currency) => ({
        name: currency,
        type: 'bar',
        data: days.map((start) => {
          const found = activity.revenue_per_day.find(
            (r) => r.currency === currency && Date.parse(r.start) === Date.parse(start),
          );
          // Major units for the axis; the figures above are exact.
          return found ? found.amount_minor / 100 : 0;
        }),
      })),
    }, { replaceMerge: ['series'] });

    const minutes = activity.messages_per_minute;
    figure('messages.minute', minutes[minutes.length - 1].count);
    figure('messages.hour', minutes.reduce((sum, b) => sum + b.count, 0));
    figure('active-chats', activity.active_chats);
    chart('chart-messages').setOption({
      grid: { left: 40, right: 10, top: 10, bottom: 30 },
      tooltip: { trigger: 'axis' },
      xAxis: { type: 'category', data: minutes.map((b) => hourLabel(b.start)) },
      yAxis: { type: 'value', minInterval: 1 },
      series: [{ type: 'line', areaStyle: {}, data: minutes.map((b) => b.count) }],
    });
  }

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = String(text);
    if (className) td.className = className;
    return td;
  }

  function renderPipeline(pipeline) {
    figure('head', pipeline.head);
    const relay = pipeline.relay;
    figure('relay.state', relay ? (relay.active ? 'active' : 'standby') : 'not here');
    figure('relay.published', relay ? relay.published : '–');
    figure('relay.horizon-age', relay ? `${relay.horizon_age_ms} ms` : '–');
    figure('commands-per-second', pipeline.commands_per_second.toFixed(2));
    figure('command-p99', pipeline.command_p99_ms === null ? '–' : `${pipeline.command_p99_ms.toFixed(1)} ms`);
    figure('websockets', pipeline.websocket_connections === null ? '–' : pipeline.websocket_connections);

    const rows = pipeline.projections.map((p) => {
      const row = document.createElement('tr');
      row.dataset.projection = p.name;
      row.append(cell(p.name), cell(p.position, 'number'), cell(p.lag, 'number'), cell(p.lag_ms, 'number'));
      return row;
    });
    $('#projections').replaceChildren(...rows);
    chart('chart-lag').setOption({
      grid: { left: 50, right: 50, top: 30, bottom: 30 },
      legend: { top: 0 },
      tooltip: { trigger: 'axis' },
      xAxis: { type: 'category', data: pipeline.projections.map((p) => p.name) },
      yAxis: [{ type: 'value', name: 'positions', minInterval: 1 }, { type: 'value', name: 'ms' }],
      series: [
        { name: 'lag', type: 'bar', data: pipeline.projections.map((p) => p.lag) },
        { name: 'lag (ms)', type: 'bar', yAxisIndex: 1, data: pipeline.projections.map((p) => p.lag_ms) },
      ],
    });

    figure('dead-letters', `${pipeline.dead_letters.length} set aside`);
    const letters = pipeline.dead_letters.map((letter) => {
      const row = document.createElement('tr');
      row.append(
        cell(letter.projection),
        cell(letter.position, 'number'),
        cell(letter.attempts, 'number'),
        cell(letter.error, 'error-text'),
      );
      const action = document.createElement('td');
      if (isAdmin() && pipeline.retriable.includes(letter.projection)) {
        const button = document.createElement('button');
        button.type = 'button';
        button.textContent = 'Retry';
        button.dataset.retry = letter.projection;
        action.append(button);
      }
      row.append(action);
      return row;
    });
    $('#dead-letters').replaceChildren(...letters);
  }

  function showError(error) {
    if (!(error instanceof SignedOut)) $('#error').textContent = error.message;
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    let behind = false;
    try {
      const reads = [api('/api/v1/dashboard/pipeline')];
      if (isAdmin()) {
        reads.push(api('/api/v1/dashboard/summary'), api('/api/v1/dashboard/activity'));
      }
      const [pipeline, summary, activity] = await Promise.all(reads);
      renderPipeline(pipeline.body);
      if (summary && activity) {
        renderSummary(summary.body);
        renderActivity(activity.body);
        behind = Math.min(summary.position, activity.position) < wanted;
      }
      $('#error').textContent = '';
      document.body.dataset.position = String(
        summary && activity ? Math.min(summary.position, activity.position) : pipeline.body.head,
      );
    } catch (error) {
      showError(error);
    } finally {
      busy = false;
    }
    if (again || behind) {
      again = false;
      schedule(behind ? CHASE_MS : 0);
    }
  }

  function schedule(delay) {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      refresh();
    }, delay);
  }

  function onStreamEvent(block) {
    let id = null;
    for (const line of block.split('\n')) {
      if (line.startsWith('id:')) id = Number(line.slice(3).trim());
    }
    if (id === null) return; // a keep-alive comment or a notification
    if (id > wanted) wanted = id;
    schedule(THROTTLE_MS);
  }

  function setLive(live) {
    const status = $('#status');
    status.textContent = live ? 'live' : 'reconnecting';
    status.classList.toggle('live', live);
  }

  /** Follows `/api/v1/stream` with the token in a header, reconnecting. */
  async function follow(control) {
    while (!control.signal.aborted) {
      try {
        const response = await fetch('/api/v1/stream', {
          headers: { Authorization: `Bearer ${token()}`, Accept: 'text/event-stream' },
          signal: control.signal,
        });
        if (response.status === 401) {
          signOut('Your session has ended; sign in again.');
          return;
        }
        if (!response.ok) throw new Error(`the live stream answered ${response.status}`);
        setLive(true);
        // Whatever happened while the stream was down is fetched once.
        schedule(0);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            onStreamEvent(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (error) {
        if (control.signal.aborted) return;
      }
      setLive(false);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  function start() {
    $('#sign-in').hidden = true;
    $('#board').hidden = false;
    $('#business').hidden = !isAdmin();
    $('#who').hidden = false;
    $('#who').textContent = `signed in as ${role()}`;
    $('#sign-out').hidden = false;
    stream = new AbortController();
    follow(stream);
    ticker = setInterval(() => schedule(0), PERIOD_MS);
    schedule(0);
  }

  function signOut(message = '') {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(ROLE);
    if (stream) stream.abort();
    if (ticker) clearInterval(ticker);
    stream = null;
    ticker = null;
    $('#board').hidden = true;
    $('#sign-in').hidden = false;
    $('#who').hidden = true;
    $('#sign-out').hidden = true;
    $('#status').textContent = 'signed out';
    $('#status').classList.remove('live');
    $('#sign-in-error').textContent = message;
  }

  async function signIn(event) {
    event.preventDefault();
    $('#sign-in-error').textContent = '';
    const response = await fetch('/api/v1/auth/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email: $('#email').value, password: $('#password').value }),
    }).catch(() => null);
    const body = response ? await response.json().catch(() => ({})) : {};
    if (!response || !response.ok) {
      $('#sign-in-error').textContent = body.detail || 'Herald cannot be reached.';
      return;
    }
    if (body.user.role !== 'admin' && body.user.role !== 'auditor') {
      $('#sign-in-error').textContent = 'The dashboard is for admins and auditors.';
      return;
    }
    sessionStorage.setItem(TOKEN, body.access_token);
    sessionStorage.setItem(ROLE, body.user.role);
    $('#password').value = '';
    start();
  }

  async function retry(event) {
    const button = event.target.closest('button[data-retry]');
    if (!button) return;
    button.disabled = true;
    try {
      const { body } = await api(
        `/api/v1/dashboard/dead-letters/${encodeURIComponent(button.dataset.retry)}/retry`,
        { method: 'POST' },
      );
      $('#notice').textContent = `${button.dataset.retry}: ${body.applied} applied, ${body.failing} still failing`;
    } catch (error) {
      showError(error);
    }
    schedule(0);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('#sign-in').addEventListener('submit', signIn);
    $('#sign-out').addEventListener('click', () => signOut());
    $('#dead-letters').addEventListener('click', retry);
    window.addEventListener('resize', () => Object.values(charts).forEach((c) => c.resize()));
    if (token()) start();
  });
})();
