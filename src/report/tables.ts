/** Small renderers for the four report formats. Cells are plain strings; callers format numbers. */

export type Row = Record<string, string | number | null>;

const cell = (v: string | number | null | undefined) => (v === null || v === undefined ? '' : String(v));

/** How each format writes a table line by line, so a long table can be streamed (see account-list.ts). */
export interface LineFormat {
  head: string[];
  row: (r: Row) => string;
}

/** Aligned text columns of the given widths (the widest cell of each column). */
export function tableFormat(columns: string[], widths: number[]): LineFormat {
  const w = columns.map((c, i) => Math.max(c.length, widths[i] ?? 0));
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(w[i] ?? 0))
      .join('  ')
      .trimEnd();
  return {
    head: [line(columns), line(w.map((n) => '-'.repeat(n)))],
    row: (r) => line(columns.map((c) => cell(r[c]))),
  };
}

export function cellWidth(v: string | number | null | undefined): number {
  return cell(v).length;
}

export function markdownFormat(columns: string[]): LineFormat {
  const esc = (v: string | number | null | undefined) => cell(v).replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  return {
    head: [`| ${columns.join(' | ')} |`, `| ${columns.map(() => '---').join(' | ')} |`],
    row: (r) => `| ${columns.map((c) => esc(r[c])).join(' | ')} |`,
  };
}

export function csvFormat(columns: string[]): LineFormat {
  return { head: [columns.join(',')], row: (r) => columns.map((c) => csvCell(r[c])).join(',') };
}

function render(format: LineFormat, rows: Row[]): string {
  return [...format.head, ...rows.map(format.row)].join('\n');
}

export function renderTable(columns: string[], rows: Row[]): string {
  const widths = columns.map((c) => Math.max(0, ...rows.map((r) => cellWidth(r[c]))));
  return render(tableFormat(columns, widths), rows);
}

export function renderMarkdown(columns: string[], rows: Row[]): string {
  return render(markdownFormat(columns), rows);
}

/** RFC 4180: quote cells with commas, quotes or line breaks; double inner quotes. */
export function csvCell(v: string | number | null | undefined): string {
  if (v === null || v === undefined) return '';
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function renderCsv(columns: string[], rows: Row[]): string {
  return render(csvFormat(columns), rows);
}

export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}
