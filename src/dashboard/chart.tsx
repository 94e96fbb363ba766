// A limit's usage over its window as bars (uPlot on a canvas), with the same figures as a table for screen readers.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import type { LimitUsage } from './api.js';
import { dateTime, duration, tokens } from './format.js';

const HEIGHT = 160;

/** The page's own colours (light or dark), read from its stylesheet's custom properties. */
function colours(): { ink: string; grid: string; bar: string } {
  const style = getComputedStyle(document.documentElement);
  const read = (name: string): string => style.getPropertyValue(name).trim();
  return { ink: read('--ink'), grid: read('--line'), bar: read('--used') };
}

function options(width: number): uPlot.Options {
  const { ink, grid, bar } = colours();
  const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  return {
    width,
    height: HEIGHT,
    legend: { show: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: { range: (_plot, _min, max) => [0, Math.max(1, max)] } },
    axes: [axis, { ...axis, size: 60, values: (_plot, ticks) => ticks.map((tick) => tokens(tick)) }],
    series: [{}, { label: 'tokens', fill: bar, stroke: bar, paths: uPlot.paths.bars!({ size: [0.9, 40] }), points: { show: false } }],
  };
}

function seriesOf(limit: LimitUsage): uPlot.AlignedData {
  return [limit.points.map((point) => Date.parse(point.start) / 1000), limit.points.map((point) => point.tokens)];
}

export function UsageChart({ limit }: { limit: LimitUsage }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | undefined>(undefined);
  const data = seriesOf(limit);
  useEffect(() => {
    const element = box.current!;
    const make = (): void => {
      plot.current?.destroy();
      plot.current = new uPlot(options(element.clientWidth || 300), seriesOf(limit), element);
    };
    make();
    const resized = new ResizeObserver(() => plot.current?.setSize({ width: element.clientWidth || 300, height: HEIGHT }));
    resized.observe(element);
    const scheme = matchMedia('(prefers-color-scheme: dark)');
    scheme.addEventListener('change', make);
    return () => {
      resized.disconnect();
      scheme.removeEventListener('change', make);
      plot.current?.destroy();
    };
  }, []);
  useEffect(() => plot.current?.setData(data), [JSON.stringify(data)]);
  const busiest = Math.max(0, ...limit.points.map((point) => point.tokens));
  const summary = `Usage over the last ${limit.window} in ${duration(limit.resolution_seconds * 1000)} steps: ${tokens(limit.used)} tokens, at most ${tokens(busiest)} in one step.`;
  return (
    <figure class="chart">
      <div ref={box} role="img" aria-label={summary} />
      <figcaption>{summary}</figcaption>
      <details>
        <summary>Usage as a table</summary>
        <table>
          <caption class="hidden">Tokens used per {duration(limit.resolution_seconds * 1000)} in the {limit.name} window</caption>
          <thead>
            <tr><th scope="col">From</th><th scope="col">Tokens</th></tr>
          </thead>
          <tbody>
            {limit.points.filter((point) => point.tokens > 0).map((point) => (
              <tr key={point.start}><td>{dateTime(point.start)}</td><td>{tokens(point.tokens)}</td></tr>
            ))}
          </tbody>
        </table>
      </details>
    </figure>
  );
}
