// Exports known spans, metrics and logs to vitals with the real OpenTelemetry Node SDK and prints the
// ground truth as JSON on stdout.
//
// node send.mjs --transport json|proto|grpc --endpoint http://127.0.0.1:PORT --service NAME [--spans N]
import { parseArgs } from 'node:util';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { BatchLogRecordProcessor, LoggerProvider } from '@opentelemetry/sdk-logs';
import { OTLPTraceExporter as JsonTraces } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as ProtoTraces } from '@opentelemetry/exporter-trace-otlp-proto';
import { OTLPTraceExporter as GrpcTraces } from '@opentelemetry/exporter-trace-otlp-grpc';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { OTLPLogExporter } from '@opentelemetry/exporter-logs-otlp-http';

const { values: a } = parseArgs({
  options: {
    transport: { type: 'string' },
    endpoint: { type: 'string' },
    service: { type: 'string', default: 'node-shop' },
    spans: { type: 'string', default: '100' },
    http: { type: 'string' },
  },
});
const resource = resourceFromAttributes({ 'service.name': a.service, 'service.instance.id': 'n-1' });
// Metrics and logs always go over OTLP/HTTP JSON (the Node exporters' default encoding).
const httpBase = a.http ?? a.endpoint;

const traceExporter = {
  json: () => new JsonTraces({ url: `${a.endpoint}/v1/traces` }),
  proto: () => new ProtoTraces({ url: `${a.endpoint}/v1/traces` }),
  grpc: () => new GrpcTraces({ url: a.endpoint }),
}[a.transport]();

const tp = new TracerProvider({ resource, spanProcessors: [new BatchSpanProcessor({ exporter: traceExporter, maxExportBatchSize: 50 })] });
const tracer = tp.getTracer('vitals-node-test');
const truth = { requests: {}, count: 0, counter: 0, hist: { count: 0, sum: 0 }, logs: { info: 0, error: 0 } };
const t0 = [1_700_000_000, 0];
const n = Number(a.spans);
for (let i = 0; i < n; i++) {
  const route = i % 2 ? '/cart' : '/checkout';
  const durMs = 1 + ((i * 37) % 500);
  const span = tracer.startSpan(`POST ${route}`, {
    kind: i % 5 === 4 ? SpanKind.CONSUMER : SpanKind.SERVER,
    attributes: { 'http.route': route, 'http.response.status_code': i % 9 === 0 ? 500 : 201 },
    startTime: [t0[0] + i, 0],
  });
  const isServer = i % 5 !== 4;
  const error = i % 7 === 0;
  if (error) span.setStatus({ code: SpanStatusCode.ERROR });
  span.end([t0[0] + i, durMs * 1_000_000]);
  const outcome = error || (isServer && i % 9 === 0) ? 'error' : 'ok';
  const key = `${route}|${isServer ? 'server' : 'consumer'}|${outcome}`;
  truth.requests[key] = (truth.requests[key] ?? 0) + 1;
  truth.count++;
}
await tp.forceFlush();
await tp.shutdown();

const reader = new PeriodicExportingMetricReader({
  exporter: new OTLPMetricExporter({ url: `${httpBase}/v1/metrics` }),
  exportIntervalMillis: 3_600_000,
});
const mp = new MeterProvider({ resource, readers: [reader] });
const meter = mp.getMeter('vitals-node-test');
const carts = meter.createCounter('carts.created', { unit: '{cart}' });
const size = meter.createHistogram('cart.size', { unit: 'By', advice: { explicitBucketBoundaries: [100, 1000] } });
for (let i = 0; i < 10; i++) {
  carts.add(2, { region: 'eu' });
  size.record(i * 150, { region: 'eu' });
  truth.counter += 2;
  truth.hist.count++;
  truth.hist.sum += i * 150;
}
await mp.forceFlush();
await mp.shutdown();

const lp = new LoggerProvider({ resource, processors: [new BatchLogRecordProcessor({ exporter: new OTLPLogExporter({ url: `${httpBase}/v1/logs` }) })] });
const logger = lp.getLogger('vitals-node-test');
for (let i = 0; i < 4; i++) {
  logger.emit({ severityNumber: 9, severityText: 'INFO', body: 'ok' });
  truth.logs.info++;
}
logger.emit({ severityNumber: 17, severityText: 'ERROR', body: 'bad' });
truth.logs.error++;
await lp.forceFlush();
await lp.shutdown();

process.stdout.write(JSON.stringify(truth));
