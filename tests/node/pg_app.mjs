// An Express app over node-postgres, instrumented by the real OpenTelemetry http, express and pg
// instrumentations, exporting spans over OTLP/HTTP (protobuf) to vitals.
//
// node pg_app.mjs --pg URL --endpoint http://127.0.0.1:PORT --loop N --batch M
//     [--service NAME --pool-max K --busy-seconds S]
//
// /items/loop fetches 20 items with one query per item (the N+1); /items/batch fetches the same 20 with
// one query. Items come from the `books` view the Python ORM app creates (4 ms per query). The script
// requests each endpoint N and M times, flushes the SDK and prints the trace ids of each as JSON.
// With --busy-seconds, eight clients then request /items/one (one query) for S seconds against a pool
// of K connections, and the pool's metrics (db.client.connection.*) are exported every 250 ms.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
import { ExpressInstrumentation } from '@opentelemetry/instrumentation-express';
import { PgInstrumentation } from '@opentelemetry/instrumentation-pg';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';

const { values: a } = parseArgs({
  options: {
    pg: { type: 'string' },
    endpoint: { type: 'string' },
    loop: { type: 'string', default: '1' },
    batch: { type: 'string', default: '1' },
    service: { type: 'string', default: 'express-shop' },
    'pool-max': { type: 'string', default: '4' },
    'busy-seconds': { type: 'string', default: '0' },
  },
});

context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const tp = new TracerProvider({
  resource: resourceFromAttributes({ 'service.name': a.service }),
  spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url: `${a.endpoint}/v1/traces` }), scheduledDelayMillis: 200 })],
});
trace.setGlobalTracerProvider(tp);
const mp = new MeterProvider({
  resource: resourceFromAttributes({ 'service.name': a.service }),
  readers: [new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter({ url: `${a.endpoint}/v1/metrics` }), exportIntervalMillis: 250 })],
});
registerInstrumentations({
  tracerProvider: tp,
  meterProvider: mp,
  instrumentations: [new HttpInstrumentation(), new ExpressInstrumentation(), new PgInstrumentation()],
});
// CommonJS modules loaded after the instrumentations are registered, so their hooks apply.
const require = createRequire(import.meta.url);
const express = require('express');
const pg = require('pg');

// Host, port and database given apart (not as a URL), so the instrumentation can name the pool.
const url = new URL(a.pg);
const pool = new pg.Pool({
  host: url.hostname, port: Number(url.port), database: url.pathname.slice(1), user: url.username,
  max: Number(a['pool-max']),
});
const ids = [];
for (let author = 1; author <= 10; author++) for (let b = 0; b < 2; b++) ids.push(author * 100 + b);
const seen = { loop: [], batch: [] };
const app = express();
app.get('/items/loop', async (req, res) => {
  seen.loop.push(trace.getActiveSpan().spanContext().traceId);
  const out = [];
  for (const id of ids) {
    const r = await pool.query('SELECT id, title FROM books WHERE id = $1', [id]);
    out.push(r.rows[0]);
  }
  res.json(out);
});
app.get('/items/batch', async (req, res) => {
  seen.batch.push(trace.getActiveSpan().spanContext().traceId);
  const r = await pool.query('SELECT id, title FROM books WHERE id = ANY($1) ORDER BY id', [ids]);
  res.json(r.rows);
});

app.get('/items/one', async (req, res) => {
  const r = await pool.query('SELECT id, title FROM books WHERE id = $1', [ids[0]]);
  res.json(r.rows);
});

const server = await new Promise((resolve) => {
  const s = app.listen(0, '127.0.0.1', () => resolve(s));
});
const base = `http://127.0.0.1:${server.address().port}`;
for (const [path, n] of [['/items/loop', Number(a.loop)], ['/items/batch', Number(a.batch)]]) {
  for (let i = 0; i < n; i++) {
    const r = await fetch(base + path);
    const body = await r.json();
    if (body.length !== ids.length) throw new Error(`${path}: ${body.length} items`);
  }
}
const busyUntil = Date.now() + Number(a['busy-seconds']) * 1000;
let busy = 0;
await Promise.all(Array.from({ length: 8 }, async () => {
  while (Date.now() < busyUntil) {
    const r = await fetch(base + '/items/one');
    await r.json();
    busy++;
  }
}));
seen.busy = busy;
server.close();
await pool.end();
await tp.forceFlush();
await tp.shutdown();
await mp.forceFlush();
await mp.shutdown();
process.stdout.write(JSON.stringify(seen));
