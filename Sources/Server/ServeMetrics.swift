import Prometheus

/// `/metrics`: vLLM's metric names under a `meshinfer:` prefix, plus the step-level ones of this
/// server (predicted and measured step seconds, batch size and collective seconds per step).
public final class ServeMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let running, waiting, kvUsage, prefixCache: Gauge
    let promptTokens, generationTokens, success: Counter
    let ttft, interToken, e2e, queueTime, stepSeconds, predictedStepSeconds, collectiveSeconds, batchSize: ValueHistogram

    public init() {
        let r = registry
        let latency: [Double] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80]
        running = r.makeGauge(name: "meshinfer:num_requests_running", help: "Sequences in the running batch")
        waiting = r.makeGauge(name: "meshinfer:num_requests_waiting", help: "Requests waiting to be admitted")
        kvUsage = r.makeGauge(name: "meshinfer:kv_cache_usage_perc", help: "Fraction of the KV budget reserved by running sequences (1 = full)")
        prefixCache = r.makeGauge(name: "meshinfer:prefix_cache_positions", help: "KV positions the prefix cache holds")
        promptTokens = r.makeCounter(name: "meshinfer:prompt_tokens_total", help: "Prompt tokens of finished requests")
        generationTokens = r.makeCounter(name: "meshinfer:generation_tokens_total", help: "Generated tokens")
        success = r.makeCounter(name: "meshinfer:request_success_total", help: "Requests that finished")
        ttft = r.makeValueHistogram(name: "meshinfer:time_to_first_token_seconds", buckets: latency, help: "Arrival to first token")
        interToken = r.makeValueHistogram(name: "meshinfer:inter_token_latency_seconds", buckets: latency, help: "Between a request's tokens")
        e2e = r.makeValueHistogram(name: "meshinfer:e2e_request_latency_seconds", buckets: latency, help: "Arrival to last token")
        queueTime = r.makeValueHistogram(name: "meshinfer:request_queue_time_seconds", buckets: latency, help: "Arrival to the first step that runs it")
        stepSeconds = r.makeValueHistogram(name: "meshinfer:step_seconds", buckets: latency, help: "Measured seconds of one engine step")
        predictedStepSeconds = r.makeValueHistogram(name: "meshinfer:predicted_step_seconds", buckets: latency,
                                                    help: "Cost-model seconds of one engine step (when this host is calibrated)")
        collectiveSeconds = r.makeValueHistogram(name: "meshinfer:collective_seconds", buckets: latency,
                                                 help: "Seconds one engine step spent inside collectives (on a mesh; rank 0's under MPI)")
        batchSize = r.makeValueHistogram(name: "meshinfer:batch_size", buckets: [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256],
                                         help: "Sequences in one engine step")
    }

    func gauges(running r: Int, waiting w: Int, kvUsage k: Double, cachedPositions c: Int) {
        prefixCache.set(Double(c))
        running.set(Double(r))
        waiting.set(Double(w))
        kvUsage.set(k)
    }
    func step(seconds: Double, predicted: Double?, batch: Int, collectiveSeconds: Double?) {
        stepSeconds.record(seconds)
        if let collectiveSeconds { self.collectiveSeconds.record(collectiveSeconds) }
        if let predicted { predictedStepSeconds.record(predicted) }
        batchSize.record(Double(batch))
    }
    func firstToken(_ s: Double) { ttft.record(s) }
    func queued(_ s: Double) { queueTime.record(s) }
    func interToken(_ s: Double) { interToken.record(s) }
    func generated(_ n: Int) { generationTokens.increment(by: Int64(n)) }
    func finished(prompt: Int, seconds: Double, success ok: Bool) {
        promptTokens.increment(by: Int64(prompt))
        e2e.record(seconds)
        if ok { success.increment() }
    }

    /// The Prometheus text exposition.
    public func text() -> String {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }
}
