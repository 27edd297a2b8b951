// Reads a delimited io.prometheus.client.MetricFamily exposition on stdin with the official Go decoder
// (prometheus/common expfmt over client_model), which refuses invalid metric names, label names and
// label values, and prints one JSON summary per family. For each histogram it rebuilds the native
// buckets from their spans and deltas and reports whether they add up to the sample count, and whether
// the classic buckets are cumulative and end at it.
//
// Built offline from Debian's packages: GO111MODULE=off GOPATH=/usr/share/gocode go build.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

type bucket struct {
	Index int32  `json:"index"`
	Count uint64 `json:"count"`
}

type histogram struct {
	Labels        map[string]string `json:"labels"`
	Count         uint64            `json:"count"`
	Sum           float64           `json:"sum"`
	Schema        int32             `json:"schema"`
	ZeroThreshold float64           `json:"zero_threshold"`
	ZeroCount     uint64            `json:"zero_count"`
	Native        bool              `json:"native"`
	Positive      []bucket          `json:"positive"`
	NativeTotal   uint64            `json:"native_total"`
	NegativeOK    bool              `json:"negative_ok"`
	Classic       int               `json:"classic_buckets"`
	ClassicOK     bool              `json:"classic_ok"`
}

type family struct {
	Name       string      `json:"name"`
	Type       string      `json:"type"`
	Metrics    int         `json:"metrics"`
	Histograms []histogram `json:"histograms,omitempty"`
}

// expand turns spans and deltas into absolute bucket counts; ok is false when they disagree in length
// or a count goes negative.
func expand(spans []*dto.BucketSpan, deltas []int64) ([]bucket, bool) {
	var out []bucket
	var idx int32
	var count int64
	at := 0
	for i, s := range spans {
		if i == 0 {
			idx = s.GetOffset()
		} else {
			idx += s.GetOffset()
		}
		for k := uint32(0); k < s.GetLength(); k++ {
			if at >= len(deltas) {
				return out, false
			}
			count += deltas[at]
			at++
			if count < 0 {
				return out, false
			}
			out = append(out, bucket{Index: idx, Count: uint64(count)})
			idx++
		}
	}
	return out, at == len(deltas)
}

func main() {
	dec := expfmt.NewDecoder(os.Stdin, expfmt.FmtProtoDelim)
	enc := json.NewEncoder(os.Stdout)
	for {
		var mf dto.MetricFamily
		err := dec.Decode(&mf)
		if err == io.EOF {
			return
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "decode: %v\n", err)
			os.Exit(1)
		}
		f := family{Name: mf.GetName(), Type: mf.GetType().String(), Metrics: len(mf.GetMetric())}
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			if h == nil {
				continue
			}
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			pos, posOK := expand(h.GetPositiveSpan(), h.GetPositiveDelta())
			neg, negOK := expand(h.GetNegativeSpan(), h.GetNegativeDelta())
			total := h.GetZeroCount()
			for _, b := range pos {
				total += b.Count
			}
			for _, b := range neg {
				total += b.Count
			}
			classicOK := true
			var last uint64
			var lastBound = math.Inf(-1)
			for _, b := range h.GetBucket() {
				if b.GetCumulativeCount() < last || b.GetUpperBound() <= lastBound {
					classicOK = false
				}
				last, lastBound = b.GetCumulativeCount(), b.GetUpperBound()
			}
			if len(h.GetBucket()) > 0 && (math.IsInf(lastBound, 1) && last != h.GetSampleCount() || last > h.GetSampleCount()) {
				classicOK = false
			}
			f.Histograms = append(f.Histograms, histogram{
				Labels:        labels,
				Count:         h.GetSampleCount(),
				Sum:           h.GetSampleSum(),
				Schema:        h.GetSchema(),
				ZeroThreshold: h.GetZeroThreshold(),
				ZeroCount:     h.GetZeroCount(),
				Native:        len(h.GetPositiveSpan()) > 0 || len(h.GetNegativeSpan()) > 0,
				Positive:      pos,
				NativeTotal:   total,
				NegativeOK:    posOK && negOK,
				Classic:       len(h.GetBucket()),
				ClassicOK:     classicOK,
			})
		}
		if err := enc.Encode(f); err != nil {
			os.Exit(2)
		}
	}
}
