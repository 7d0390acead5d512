// The memory of a headless Chromium started by the benchmarks: the proportional set size (PSS)
// of its whole process tree, from /proc (Linux). PSS splits each page shared between processes
// among them, so the sum is the tree's real footprint; it covers what page-level measures miss:
// workers (in renderer processes), the storage and network services (utility processes) and,
// under SwiftShader, WebGPU's buffers (in the GPU process).

import { readdirSync, readFileSync } from 'node:fs';

/** Every live process: pid -> { ppid, cmdline }. */
function processes() {
  const out = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // The command name is in parentheses and may hold spaces: the fields after it are plain.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ');
      out.set(Number(name), { ppid, cmdline });
    } catch {
      // It ended while being read.
    }
  }
  return out;
}

/**
 * The PSS, in bytes, of the browser whose profile is `dir` and of all its descendants, in all
 * and by Chromium process type (browser, renderer, gpu-process, utility, zygote).
 */
export function browserMemory(dir) {
  const all = processes();
  const roots = [...all].filter(([, p]) => p.cmdline.includes(`--user-data-dir=${dir}`)).map(([pid]) => pid);
  const tree = new Set(roots);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, p] of all) {
      if (!tree.has(pid) && tree.has(p.ppid)) {
        tree.add(pid);
        grew = true;
      }
    }
  }
  const byType = {};
  let total = 0;
  for (const pid of tree) {
    let pss;
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      pss = m ? Number(m[1]) * 1024 : 0;
    } catch {
      continue;
    }
    const type = /--type=([\w-]+)/.exec(all.get(pid).cmdline)?.[1] ?? 'browser';
    byType[type] = (byType[type] ?? 0) + pss;
    total += pss;
  }
  return { total, byType, processes: tree.size };
}
