"""Load scripts: the language, its validation and its compilation (smp.workload.script).

Three kinds of test:

* compilation -- each operation of ``workloads/README.md`` compiles to the rows of the
  operation table (smp.workload.program.Op) that the interpreter runs;
* validation -- every class of mistake gives BadInput (``smp run``: exit status 2) with ONE
  line naming the file, the key path (``process[0].program[3].stride``) and what was
  expected;
* properties (hypothesis) -- random valid scripts compile, and random corruptions of them
  (a dropped key, a value of the wrong type, an added key, garbage, truncation) either still
  compile or give BadInput: never any other exception, never a traceback from the CLI.

Bugs found while writing these are kept as regression tests at the end of the
module, each saying what went wrong.
"""

from __future__ import annotations

import copy
import math
import re
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import smp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smp.config import kernel_from_table, machine_from_table
from smp.errors import BadInput
from smp.kern.uvm_map import EF_COPY, EF_FILE, EF_SHARED
from smp.workload.program import NSLOTS, OPW, Op
from smp.workload.script import MAX_NEST, load_script

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "workloads"
SHIPPED = sorted(p.stem for p in (REPO / "workloads").glob("*.toml"))

MS, US, S = 1_000_000, 1_000, 1_000_000_000
RW, R = 3, 1                                     # PROTS["rw"], PROTS["r"]


# -- helpers ------------------------------------------------------------------------------

def write(tmp_path: Path, text: str, name: str = "load.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def script(*ops: str, files: str = "", head: str = "") -> str:
    """One [[process]] whose program is ``ops`` (inline tables), after ``files``."""
    return head + files + "[[process]]\nprogram = [\n" + "".join(f"  {op},\n" for op in ops) \
        + "]\n"


def file_(name: str, size: str) -> str:
    return f'[[file]]\nname = "{name}"\nsize = "{size}"\n'


def rows(tmp_path: Path, *ops: str, files: str = "") -> list[list[int]]:
    """The operation table a one-process script compiles to."""
    load = load_script(str(write(tmp_path, script(*ops, files=files)))).load
    return load.table.tolist()


def row(op: Op, *args: int) -> list[int]:
    return [int(op), *args] + [0] * (OPW - 1 - len(args))


def rejects(tmp_path: Path, text: str) -> str:
    """The BadInput message for ``text``, without its ``FILE: `` prefix (checked here)."""
    p = write(tmp_path, text)
    with pytest.raises(BadInput) as ei:
        load_script(str(p))
    msg = str(ei.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{p}: "), msg
    return msg[len(f"{p}: "):]


MMAP_HEAP = '{ op = "mmap", region = "heap", size = "64K" }'     # 16 pages, slot 0


# -- compilation: one example per operation --------------------------------------------------

def test_anonymous_mmap_is_a_private_copy_on_write_mapping(tmp_path):
    assert rows(tmp_path, '{ op = "mmap", region = "heap", size = "16M" }') == [
        row(Op.MMAP, 0, 4096, RW, EF_COPY, -1, 0, 0),
        row(Op.EXIT),
    ]


def test_mmap_prot_and_advice_are_encoded(tmp_path):
    t = rows(tmp_path, '{ op = "mmap", region = "text", size = "8K", prot = "rx", '
                       'advice = "random" }',
             '{ op = "mmap", region = "guard", size = 1, prot = "none", advice = "sequential" }')
    assert t[0] == row(Op.MMAP, 0, 2, 5, EF_COPY, -1, 0, 1)
    assert t[1] == row(Op.MMAP, 1, 1, 0, EF_COPY, -1, 0, 2)


def test_file_backed_mmap_names_the_file_and_its_page_offset(tmp_path):
    files = file_("libc", "1M") + file_("db", "256K")
    t = rows(tmp_path,
             '{ op = "mmap", region = "text", size = "512K", file = "libc", offset = "256K", '
             'prot = "r" }',
             '{ op = "mmap", region = "shm", size = "256K", file = "db", share = "shared" }',
             files=files)
    assert t[0] == row(Op.MMAP, 0, 128, R, EF_COPY | EF_FILE, 0, 64, 0)
    assert t[1] == row(Op.MMAP, 1, 64, RW, EF_SHARED | EF_FILE, 1, 0, 0)


def test_munmap_names_the_regions_slot(tmp_path):
    t = rows(tmp_path, MMAP_HEAP, '{ op = "mmap", region = "stack", size = "8K" }',
             '{ op = "munmap", region = "stack" }', '{ op = "munmap", region = "heap" }')
    assert t[2:] == [row(Op.MUNMAP, 1), row(Op.MUNMAP, 0), row(Op.EXIT)]


def test_sequential_touch_of_the_whole_region_reads_every_page_once(tmp_path):
    t = rows(tmp_path, MMAP_HEAP, '{ op = "touch", region = "heap" }',
             '{ op = "touch", region = "heap", write = true }')
    # TOUCH [slot, first, npages (0 = whole region), stride, write, pattern, count]
    assert t[1] == row(Op.TOUCH, 0, 0, 0, 1, 0, 0, 0)
    assert t[2] == row(Op.TOUCH, 0, 0, 0, 1, 1, 0, 0)


def test_touch_of_part_of_a_region_in_pages_or_bytes(tmp_path):
    t = rows(tmp_path, MMAP_HEAP, '{ op = "touch", region = "heap", first = 2, pages = 4 }',
             '{ op = "touch", region = "heap", first = "8K", pages = "16K", count = 100 }')
    assert t[1] == row(Op.TOUCH, 0, 2, 4, 1, 0, 0, 0)
    assert t[2] == row(Op.TOUCH, 0, 2, 4, 1, 0, 0, 100)


def test_random_touch_makes_count_references(tmp_path):
    t = rows(tmp_path, MMAP_HEAP,
             '{ op = "touch", region = "heap", pattern = "random", count = 1500, write = true }')
    assert t[1] == row(Op.TOUCH, 0, 0, 0, 1, 1, 1, 1500)


def test_sparse_touch_takes_one_page_every_stride(tmp_path):
    t = rows(tmp_path, '{ op = "mmap", region = "vast", size = "2560M" }',
             '{ op = "touch", region = "vast", pattern = "sparse", stride = "4M", write = true }')
    # sparse is sequential with a stride: 640 references, one per page-table page
    assert t[1] == row(Op.TOUCH, 0, 0, 0, 1024, 1, 0, 0)


def test_touch_for_a_time_is_a_duration_block_around_the_touch(tmp_path):
    t = rows(tmp_path, MMAP_HEAP,
             '{ op = "touch", region = "heap", pattern = "random", time = "200ms" }',
             '{ op = "touch", region = "heap", count = 10, time = "1s" }')
    assert t[1:7] == [
        row(Op.DURATION, 200 * MS, 0, 0, 0, 0, 0, 3),     # last field: the block's END row
        row(Op.TOUCH, 0, 0, 0, 1, 0, 1, 256),             # 256 references between clock checks
        row(Op.END, 1),
        row(Op.DURATION, 1 * S, 0, 0, 0, 0, 0, 6),
        row(Op.TOUCH, 0, 0, 0, 1, 0, 0, 10),
        row(Op.END, 4),
    ]


def test_mlock_and_munlock_of_the_whole_region(tmp_path):
    t = rows(tmp_path, MMAP_HEAP, '{ op = "mlock", region = "heap" }',
             '{ op = "munlock", region = "heap" }')
    # MLOCK [slot, first, count (0 = the whole region, as its map entry), stride]
    assert t[1:3] == [row(Op.MLOCK, 0, 0, 0, 1), row(Op.MUNLOCK, 0, 0, 0, 1)]


def test_mlock_of_every_stride_th_page_counts_the_pages_it_wires(tmp_path):
    t = rows(tmp_path, '{ op = "mmap", region = "vast", size = "2560M" }',
             '{ op = "mlock", region = "vast", pages = "2560M", stride = "4M" }',
             '{ op = "munlock", region = "vast", first = 1, pages = 10, stride = 3 }')
    assert t[1] == row(Op.MLOCK, 0, 0, 640, 1024)
    assert t[2] == row(Op.MUNLOCK, 0, 1, 4, 3)          # pages 1, 4, 7, 10


def test_fork_row_points_at_the_child_program_compiled_after_the_parents(tmp_path):
    t = rows(tmp_path, MMAP_HEAP,
             '{ op = "fork", copies = 3, program = [ { op = "touch", region = "heap" }, '
             '{ op = "mmap", region = "tmp", size = "8K" } ] }',
             '{ op = "sleep", time = "10ms" }')
    assert t == [
        row(Op.MMAP, 0, 16, RW, EF_COPY, -1, 0, 0),
        row(Op.FORK, 4, 3),
        row(Op.SLEEP, 10 * MS),
        row(Op.EXIT),
        # the child: it inherits "heap" in slot 0, its own region takes slot 1
        row(Op.TOUCH, 0, 0, 0, 1, 0, 0, 0),
        row(Op.MMAP, 1, 2, RW, EF_COPY, -1, 0, 0),
        row(Op.EXIT),
    ]


def test_children_of_children_are_compiled_in_order(tmp_path):
    t = rows(tmp_path, '{ op = "fork", program = [ { op = "fork", program = [ '
                       '{ op = "compute", time = "1ms" } ] } ] }')
    assert t == [row(Op.FORK, 2, 1), row(Op.EXIT),
                 row(Op.FORK, 4, 1), row(Op.EXIT),
                 row(Op.COMPUTE, MS), row(Op.EXIT)]


def test_exit_ends_the_program_where_it_stands(tmp_path):
    t = rows(tmp_path, '{ op = "exit" }', '{ op = "compute", time = "1ms" }')
    assert t == [row(Op.EXIT), row(Op.COMPUTE, MS), row(Op.EXIT)]


def test_an_empty_program_just_exits(tmp_path):
    assert rows(tmp_path) == [row(Op.EXIT)]


@pytest.mark.parametrize("kind, code", [("alloc1", 0), ("malloc", 1), ("malloc_pageable", 2)])
def test_kmalloc_kinds(tmp_path, kind, code):
    t = rows(tmp_path, f'{{ op = "kmalloc", region = "bufs", size = "64K", kind = "{kind}" }}',
             '{ op = "kfree", region = "bufs" }')
    assert t == [row(Op.KMALLOC, 0, 16, code), row(Op.KFREE, 0), row(Op.EXIT)]


def test_kmalloc_defaults_to_uvm_km_alloc1(tmp_path):
    assert rows(tmp_path, '{ op = "kmalloc", region = "k", size = 2 }')[0] == \
        row(Op.KMALLOC, 0, 2, 0)


def test_read_and_write_go_through_ubc_in_pages(tmp_path):
    files = file_("src", "4M") + file_("db", "8M")
    t = rows(tmp_path, '{ op = "read", file = "db", size = "128K" }',
             '{ op = "write", file = "db", offset = "1M", size = "512K" }',
             '{ op = "read", file = "src", offset = 3, size = 1 }', files=files)
    assert t == [row(Op.READ, 1, 0, 32), row(Op.WRITE, 1, 256, 128), row(Op.READ, 0, 3, 1),
                 row(Op.EXIT)]


def test_exec_maps_text_and_data_of_the_file_and_the_old_regions_are_gone(tmp_path):
    files = file_("sh", "256K")
    t = rows(tmp_path, MMAP_HEAP,
             '{ op = "exec", file = "sh", text = "128K", data = "64K", args = "8K" }',
             '{ op = "touch", region = "text" }', '{ op = "touch", region = "data" }',
             files=files)
    assert t[1] == row(Op.EXEC, 0, 32, 16, 2, 1, 2)     # file, text, data, args, slots
    assert t[2][:2] == [int(Op.TOUCH), 1] and t[3][:2] == [int(Op.TOUCH), 2]
    # defaults: the whole file is text, no data, one page of arguments
    t = rows(tmp_path, '{ op = "exec", file = "sh" }', files=files)
    assert t[0] == row(Op.EXEC, 0, 64, 0, 1, 0, -1)


def test_rawread_maps_its_buffer_once_then_reads_into_it(tmp_path):
    t = rows(tmp_path, '{ op = "rawread", size = "64K", count = 3 }',
             '{ op = "rawread", size = "64K" }')
    assert t == [row(Op.MMAP, 0, 16, RW, EF_COPY, -1, 0, 0), row(Op.RAWREAD, 0, 16, 3),
                 row(Op.RAWREAD, 0, 16, 1), row(Op.EXIT)]
    t = rows(tmp_path, MMAP_HEAP, '{ op = "rawread", size = "32K", region = "heap" }')
    assert t[1] == row(Op.RAWREAD, 0, 8, 1)            # into a region of the program's own


def test_interrupt_tables_are_the_loads_network_interfaces(tmp_path):
    p = write(tmp_path, '[[interrupt]]\nkind = "net"\nrate = 2000\nsize = "1500"\n'
                        '[[interrupt]]\nkind = "net"\nrate = 100.5\nsize = "8K"\ncpu = 1\n'
                        'hold = "2ms"\n' + script())
    got = load_script(str(p)).load.interrupts
    assert [(i.cpu, i.period_ns, i.size, i.hold_ns) for i in got] == [
        (-1, 500 * US, 1500, 10 * MS), (1, round(S / 100.5), 8192, 2 * MS)]


def test_compute_and_sleep_in_nanoseconds(tmp_path):
    t = rows(tmp_path, '{ op = "compute", time = "2ms" }', '{ op = "sleep", time = "1.5s" }',
             '{ op = "compute", time = 0.25 }', '{ op = "sleep", time = "50us" }')
    assert t == [row(Op.COMPUTE, 2 * MS), row(Op.SLEEP, 1_500 * MS), row(Op.COMPUTE, 250 * MS),
                 row(Op.SLEEP, 50 * US), row(Op.EXIT)]


def test_repeat_block_ends_in_an_end_row_that_points_back(tmp_path):
    inner = '{ op = "repeat", count = 2, body = [ { op = "sleep", time = "1ms" } ] }'
    t = rows(tmp_path, '{ op = "repeat", count = 50, body = [ '
                       f'{{ op = "compute", time = "1ms" }}, {inner} ] }}')
    assert t == [
        row(Op.REPEAT, 50, 0, 0, 0, 0, 0, 5),
        row(Op.COMPUTE, MS),
        row(Op.REPEAT, 2, 0, 0, 0, 0, 0, 4),
        row(Op.SLEEP, MS),
        row(Op.END, 2),
        row(Op.END, 0),
        row(Op.EXIT),
    ]


def test_duration_block_repeats_its_body_until_the_time_is_up(tmp_path):
    t = rows(tmp_path, MMAP_HEAP, '{ op = "duration", time = "4s", body = [ '
                                  '{ op = "touch", region = "heap" } ] }')
    assert t[1:] == [row(Op.DURATION, 4 * S, 0, 0, 0, 0, 0, 3), row(Op.TOUCH, 0, 0, 0, 1),
                     row(Op.END, 1), row(Op.EXIT)]


PHASES = """\
[[process]]
name = "cc1"
count = 32
program = [
  { op = "barrier", name = "start" },
  { op = "compute", time = "1ms" },
  { op = "barrier", name = "compiled" },
]

[[process]]
name = "hog"
program = [
  { op = "barrier", name = "start" },
  { op = "barrier", name = "compiled", count = 10 },
  { op = "mmap", region = "big", size = "24M" },
]
"""


def test_barrier_waits_for_every_process_that_reaches_it_unless_given_a_count(tmp_path):
    load = load_script(str(write(tmp_path, PHASES))).load
    barriers = [r[1:3] for r in load.table.tolist() if r[0] == Op.BARRIER]
    # "start": all 32 compilers and the hog; "compiled": the hog's explicit count wins
    assert barriers == [[0, 33], [1, 10], [0, 33], [1, 10]]


def test_every_program_ends_with_an_implicit_exit(tmp_path):
    text = script('{ op = "compute", time = "1ms" }') + \
        '[[process]]\nprogram = [ { op = "sleep", time = "1ms" } ]\n'
    load = load_script(str(write(tmp_path, text))).load
    assert load.table.tolist() == [row(Op.COMPUTE, MS), row(Op.EXIT), row(Op.SLEEP, MS),
                                   row(Op.EXIT)]
    assert [k.pc for k in load.kinds] == [0, 2]


# -- compilation: the rest of the script ------------------------------------------------------

@pytest.mark.parametrize("size, pages", [
    ("4K", 1), ("16M", 4096), ("16m", 4096), ("16MiB", 4096), ("16 MB", 4096), ("1G", 262144),
    ("0.5M", 128), ("8192", 2), ("6K", 1), (3, 3), (4096, 4096),
])
def test_sizes_take_units_and_plain_integers_count_pages(tmp_path, size, pages):
    value = f'"{size}"' if isinstance(size, str) else str(size)
    assert rows(tmp_path, f'{{ op = "mmap", region = "r", size = {value} }}')[0][2] == pages


@pytest.mark.parametrize("time, ns", [
    ('"200ms"', 200 * MS), ('"1.5s"', 1_500 * MS), ('"10us"', 10 * US), ('"10µs"', 10 * US),
    ('"50ns"', 50), ('"2"', 2 * S), ("2", 2 * S), ("0.001", MS), ('".5s"', 500 * MS),
    ('" 3 ms "', 3 * MS),
])
def test_durations_take_units_and_bare_numbers_are_seconds(tmp_path, time, ns):
    assert rows(tmp_path, f'{{ op = "compute", time = {time} }}')[0][1] == ns


def test_run_section_names_machine_kernel_and_time_limit(tmp_path):
    head = ('[run]\nmachine = "tiny"\nkernel = "netbsd-2001-nosteal"\ntime_limit = "90s"\n'
            'description = "a test"\n')
    s = load_script(str(write(tmp_path, script(head=head))))
    assert (s.machine, s.kernel, s.time_limit_s) == ("tiny", "netbsd-2001-nosteal", 90.0)
    assert s.name == "load" and s.path == str(tmp_path / "load.toml")


def test_run_section_defaults(tmp_path):
    s = load_script(str(write(tmp_path, script())))
    assert (s.machine, s.kernel, s.time_limit_s) == ("i386mp-4", "default", None)


def test_process_kinds_keep_name_count_uid_and_cpu(tmp_path):
    text = ('[[process]]\nname = "cc1"\ncount = 8\nuid = 1000\ncpu = 3\nprogram = []\n'
            '[[process]]\nprogram = []\n')
    kinds = load_script(str(write(tmp_path, text))).load.kinds
    assert [(k.name, k.count, k.uid, k.cpu, k.pc) for k in kinds] == [
        ("cc1", 8, 1000, 3, 0), ("proc1", 1, 0, -1, 1)]


def test_files_are_declared_in_pages(tmp_path):
    text = script(files=file_("a", "4M") + '[[file]]\nname = "b"\nsize = 3\n')
    assert load_script(str(write(tmp_path, text))).load.files == [1024, 3]


def test_maxproc_counts_every_fork_a_program_can_make(tmp_path):
    fork = '{ op = "fork", copies = 3, program = [] }'
    text = ('[[process]]\ncount = 4\nprogram = [ { op = "repeat", count = 20, body = [ '
            + fork + ' ] } ]\n')
    load = load_script(str(write(tmp_path, text))).load
    assert load.maxproc == 4 + 4 * 20 * 3 and load.initial == 4


def test_forks_inside_a_duration_are_unbounded(tmp_path):
    text = script('{ op = "duration", time = "1s", body = [ { op = "fork", program = [] } ] }')
    assert load_script(str(write(tmp_path, text))).load.maxproc > 10**6


def test_private_pages_size_each_processes_anon_map(tmp_path):
    text = script('{ op = "mmap", region = "a", size = 100 }',
                  '{ op = "mmap", region = "b", size = 20, file = "f" }',
                  '{ op = "mmap", region = "c", size = 20, file = "f", share = "shared" }',
                  files=file_("f", "1M"))
    assert load_script(str(write(tmp_path, text))).load.amap_per_proc == 120


def test_synthetic_section_selects_the_lock_only_load(tmp_path):
    text = ('[synthetic]\nprocesses = 4\niterations = 10\nbuckets = 2\nhandoff_every = 0\n'
            'compute = "5us"\n')
    load = load_script(str(write(tmp_path, text))).load
    assert (load.nprocs, load.iterations, load.buckets, load.handoff_every,
            load.compute_ns) == (4, 10, 2, 0, 5 * US)


def test_every_operation_fixture_compiles_to_one_row_per_operation():
    load = load_script(str(FIXTURES / "every-op.toml")).load
    used = {Op(r[0]) for r in load.table.tolist()}
    assert used == set(Op) - {Op.NOP}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_script_compiles(name):
    s = load_script(name)
    assert s.name == name and s.load.table.shape[1] == OPW and s.load.initial > 0


def _readme_blocks() -> list[str]:
    text = (REPO / "workloads" / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_examples_are_valid(tmp_path):
    """Every TOML example in workloads/README.md is a load script, kernel or machine file
    that validates (so the documentation cannot drift from the language)."""
    import tomllib

    blocks = _readme_blocks()
    assert len(blocks) >= 20
    for i, block in enumerate(blocks):
        doc = tomllib.loads(block)
        if "kernel" in doc:
            kernel_from_table(doc["kernel"], name=f"block{i}", path="README.md")
        elif "machine" in doc:
            machine_from_table(doc["machine"], name=f"block{i}", path="README.md")
        else:
            load_script(str(write(tmp_path, block, f"block{i}.toml")))


# -- validation: every class of mistake ---------------------------------------------------

DEEP = '{ op = "compute", time = "1ms" }'
for _ in range(MAX_NEST + 1):
    DEEP = f'{{ op = "repeat", count = 2, body = [ {DEEP} ] }}'
MANY_REGIONS = [f'{{ op = "mmap", region = "r{i}", size = "4K" }}' for i in range(NSLOTS + 1)]
F8 = file_("src", "32K")                          # 8 pages

BAD = [
    # (id, script text, key path (None: the whole file), what the message says was expected)
    ("unknown op", script('{ op = "fly" }'), "process[0].program[0].op",
     "unknown operation 'fly' (expected one of barrier, compute, duration, exec, exit, fork"),
    ("missing op", script('{ region = "heap" }'), "process[0].program[0].op",
     "missing (expected one of barrier"),
    ("unknown key", script('{ op = "mmap", region = "heap", sise = "4K" }'),
     "process[0].program[0].sise",
     "unknown key (expected one of advice, file, offset, op, prot, region, share, size)"),
    ("unknown key in a process", "[[process]]\nprogram = []\nnice = 5\n", "process[0].nice",
     "unknown key (expected one of count, cpu, name, program, uid)"),
    ("unknown key in run", "[run]\nmachin = 'tiny'\n" + script(), "run.machin",
     "unknown key"),
    ("unknown key in a file", "[[file]]\nname = 'f'\nsize = '4K'\nmode = 1\n" + script(),
     "file[0].mode", "unknown key (expected one of name, size)"),
    ("missing required key", script('{ op = "mmap", region = "heap" }'),
     "process[0].program[0].size", "missing (required)"),
    ("missing program", "[[process]]\nname = 'cc1'\n", "process[0].program",
     "missing (required)"),
    ("missing file size", "[[file]]\nname = 'f'\n" + script(), "file[0].size",
     "missing (required)"),
    ("missing repeat body", script('{ op = "repeat", count = 2 }'),
     "process[0].program[0].body", "missing (required)"),
    ("integer as a string", script('{ op = "repeat", count = "3", body = [ { op = "exit" } ] }'),
     "process[0].program[0].count", "expected an integer from 1 to 1000000000, got '3'"),
    ("boolean as a string", script(MMAP_HEAP, '{ op = "touch", region = "heap", write = "yes" }'),
     "process[0].program[1].write", "expected true or false, got 'yes'"),
    ("boolean as an integer", script('{ op = "fork", copies = true, program = [] }'),
     "process[0].program[0].copies", "expected an integer from 1 to 4096, got True"),
    ("region as an integer", script('{ op = "mmap", region = 3, size = "4K" }'),
     "process[0].program[0].region", "expected a string, got 3"),
    ("empty region name", script('{ op = "kmalloc", region = "", size = "4K" }'),
     "process[0].program[0].region", "expected a string, got ''"),
    ("choice not in the list", script('{ op = "mmap", region = "h", size = "4K", prot = "rws" }'),
     "process[0].program[0].prot", "expected one of r, rw, rx, rwx, none, got 'rws'"),
    ("unknown kmalloc kind", script('{ op = "kmalloc", region = "k", size = "4K", '
                                    'kind = "vmalloc" }'),
     "process[0].program[0].kind", "expected one of alloc1, malloc, malloc_pageable"),
    ("unknown touch pattern", script(MMAP_HEAP, '{ op = "touch", region = "heap", '
                                                'pattern = "zigzag" }'),
     "process[0].program[1].pattern", "expected one of sequential, random, sparse"),
    ("operation not a table", script('"mmap"'), "process[0].program[0]",
     "expected a table, got str"),
    ("program not a list", '[[process]]\nprogram = "run"\n', "process[0].program",
     "expected a list of operations"),
    ("fork program not a list", script('{ op = "fork", program = 5 }'),
     "process[0].program[0].program", "expected a list of operations"),
    ("process count zero", "[[process]]\ncount = 0\nprogram = []\n", "process[0].count",
     "expected an integer from 1 to 65536, got 0"),
    ("cpu out of range", "[[process]]\ncpu = 64\nprogram = []\n", "process[0].cpu",
     "expected an integer from -1 to 63, got 64"),
    ("uid negative", "[[process]]\nuid = -1\nprogram = []\n", "process[0].uid",
     "expected an integer from 0 to 65535, got -1"),
    ("run is not a table", "run = 5\n" + script(), "run", "expected a table, got int"),
    ("processes not tables", "process = [1]\n", "process[0]", "expected a table, got int"),
    ("process is one table", "[process]\nprogram = []\n", "process",
     "expected [[process]] tables"),
    ("file is one table", "[file]\nname = 'f'\nsize = '4K'\n" + script(), "file",
     "expected [[file]] tables"),
    ("size without a known unit", script('{ op = "mmap", region = "h", size = "16Q" }'),
     "process[0].program[0].size", "expected a size such as 4K, 16M or 1G, got '16Q'"),
    ("size of zero", script('{ op = "mmap", region = "h", size = "0" }'),
     "process[0].program[0].size", "must be at least 1 page(s), got '0'"),
    ("size below a page", script('{ op = "kmalloc", region = "k", size = "2K" }'),
     "process[0].program[0].size", "must be at least 1 page(s), got '2K'"),
    ("negative size", script('{ op = "mmap", region = "h", size = -4 }'),
     "process[0].program[0].size", "must be at least 1 page(s), got -4"),
    ("size as a float", script('{ op = "mmap", region = "h", size = 4096.0 }'),
     "process[0].program[0].size", "expected a size such as 4K, 16M or 1G, got 4096.0"),
    ("negative first page", script(MMAP_HEAP, '{ op = "touch", region = "heap", first = -1 }'),
     "process[0].program[1].first", "must be at least 0 page(s), got -1"),
    ("stride below a page", script(MMAP_HEAP, '{ op = "mlock", region = "heap", pages = 8, '
                                              'stride = "1K" }'),
     "process[0].program[1].stride", "must be at least 1 page(s), got '1K'"),
    ("file size of zero", "[[file]]\nname = 'f'\nsize = 0\n" + script(), "file[0].size",
     "must be at least 1 page(s), got 0"),
    ("duration without a known unit", script('{ op = "compute", time = "fast" }'),
     "process[0].program[0].time", "expected a duration such as 200ms, 1.5s or 10us, got 'fast'"),
    ("duration in minutes", script('{ op = "sleep", time = "5min" }'),
     "process[0].program[0].time", "expected a duration such as 200ms, 1.5s or 10us"),
    ("negative duration", script('{ op = "sleep", time = -1 }'),
     "process[0].program[0].time", "expected a duration such as 200ms, 1.5s or 10us, got -1"),
    ("infinite duration", script('{ op = "duration", time = inf, body = [ { op = "exit" } ] }'),
     "process[0].program[0].time", "got inf"),
    ("duration as a date", script('{ op = "compute", time = 1979-05-27 }'),
     "process[0].program[0].time", "expected a duration"),
    ("time limit of zero", "[run]\ntime_limit = '0s'\n" + script(), "run.time_limit",
     "must be positive"),
    ("unknown region", script('{ op = "touch", region = "heap" }'),
     "process[0].program[0].region",
     "region 'heap' is not mapped by an earlier mmap or kmalloc of this program"),
    ("unknown region to munmap", script('{ op = "munmap", region = "heap" }'),
     "process[0].program[0].region", "region 'heap' is not mapped"),
    ("unknown region to mlock", script(MMAP_HEAP, '{ op = "mlock", region = "hep" }'),
     "process[0].program[1].region", "region 'hep' is not mapped"),
    ("unknown region to kfree", script('{ op = "kfree", region = "bufs" }'),
     "process[0].program[0].region", "region 'bufs' is not mapped"),
    ("region of another process kind",
     script(MMAP_HEAP) + script('{ op = "touch", region = "heap" }'),
     "process[1].program[0].region", "region 'heap' is not mapped"),
    ("region of a child, in its parent",
     script('{ op = "fork", program = [ { op = "mmap", region = "tmp", size = "4K" } ] }',
            '{ op = "touch", region = "tmp" }'),
     "process[0].program[1].region", "region 'tmp' is not mapped"),
    ("region used before its mmap",
     script('{ op = "touch", region = "heap" }', MMAP_HEAP),
     "process[0].program[0].region", "region 'heap' is not mapped"),
    ("duplicate region", script(MMAP_HEAP, MMAP_HEAP), "process[0].program[1].region",
     "region 'heap' is already mapped"),
    ("kmalloc over an mmap region",
     script(MMAP_HEAP, '{ op = "kmalloc", region = "heap", size = "4K" }'),
     "process[0].program[1].region", "region 'heap' is already mapped"),
    ("child maps its parent's region",
     script(MMAP_HEAP, '{ op = "fork", program = [ ' + MMAP_HEAP + ' ] }'),
     "process[0].program[1].program[0].region", "region 'heap' is already mapped"),
    ("duplicate file", file_("f", "4K") + file_("f", "8K") + script(), "file[1].name",
     "file 'f' declared twice"),
    ("unknown file to mmap",
     script('{ op = "mmap", region = "lib", size = "4K", file = "libc" }', files=F8),
     "process[0].program[0].file", "no [[file]] named 'libc'"),
    ("unknown file to read", script('{ op = "read", file = "srcs", size = "4K" }', files=F8),
     "process[0].program[0].file", "no [[file]] named 'srcs'"),
    ("unknown file to write", script('{ op = "write", file = "x", size = 1 }'),
     "process[0].program[0].file", "no [[file]] named 'x'"),
    ("file range overflow",
     script('{ op = "mmap", region = "lib", size = "24K", file = "src", offset = 4 }', files=F8),
     "process[0].program[0]", "maps pages 4..10 of file 'src', which has 8"),
    ("file mapped beyond its size",
     script('{ op = "mmap", region = "lib", size = "64K", file = "src" }', files=F8),
     "process[0].program[0]", "maps pages 0..16 of file 'src', which has 8"),
    ("shared anonymous memory", script('{ op = "mmap", region = "h", size = "4K", '
                                       'share = "shared" }'),
     "process[0].program[0].share", "shared anonymous memory is not modelled"),
    ("sparse without stride", script(MMAP_HEAP, '{ op = "touch", region = "heap", '
                                                'pattern = "sparse" }'),
     "process[0].program[1].stride", "a sparse touch needs a stride"),
    ("random without count", script(MMAP_HEAP, '{ op = "touch", region = "heap", '
                                               'pattern = "random" }'),
     "process[0].program[1].count", "a random touch needs a count (or a time)"),
    ("random with a count of zero", script(MMAP_HEAP, '{ op = "touch", region = "heap", '
                                                      'pattern = "random", count = 0 }'),
     "process[0].program[1].count", "a random touch needs a count"),
    ("empty repeat body", script('{ op = "repeat", count = 2, body = [] }'),
     "process[0].program[0].body", "expected a non-empty list of operations"),
    ("empty duration body", script('{ op = "duration", time = "1s", body = [] }'),
     "process[0].program[0].body", "expected a non-empty list of operations"),
    ("repeat body not a list", script('{ op = "repeat", count = 2, body = { op = "exit" } }'),
     "process[0].program[0].body", "expected a non-empty list of operations"),
    ("repeat count zero", script('{ op = "repeat", count = 0, body = [ { op = "exit" } ] }'),
     "process[0].program[0].count", "expected an integer from 1 to 1000000000, got 0"),
    ("nesting too deep", script(DEEP),
     "process[0].program[0]" + ".body[0]" * MAX_NEST + ".body",
     f"blocks nested deeper than {MAX_NEST}"),
    ("too many regions", script(*MANY_REGIONS),
     f"process[0].program[{NSLOTS}]",
     f"more than {NSLOTS} regions mapped at once in one process"),
    ("too many regions with inherited ones",
     script(*MANY_REGIONS[:NSLOTS], '{ op = "fork", program = [ '
            '{ op = "kmalloc", region = "k", size = 1 } ] }'),
     f"process[0].program[{NSLOTS}].program[0]",
     f"more than {NSLOTS} regions mapped at once in one process"),
    ("too many barriers",
     script(*[f'{{ op = "barrier", name = "b{i}" }}' for i in range(65)]),
     "process[0].program[64]", "more than 64 barriers"),
    ("barrier count zero", script('{ op = "barrier", name = "go", count = 0 }'),
     "process[0].program[0].count", "expected an integer from 1 to 65536, got 0"),
    ("fork copies zero", script('{ op = "fork", copies = 0, program = [] }'),
     "process[0].program[0].copies", "expected an integer from 1 to 4096, got 0"),
    ("too many files", "".join(file_(f"f{i}", "4K") for i in range(65)) + script(), "file",
     "more than 64 files"),
    ("error inside a repeat inside a child",
     script(MMAP_HEAP, '{ op = "fork", program = [ { op = "repeat", count = 2, body = [ '
            '{ op = "compute", time = "1ms" }, { op = "touch", region = "heap", '
            'pattern = "sparse" } ] } ] }'),
     "process[0].program[1].program[0].body[1].stride", "a sparse touch needs a stride"),
    ("unknown synthetic key", "[synthetic]\nthreads = 4\n", "synthetic.threads",
     "unknown key (expected one of"),
    ("synthetic processes zero", "[synthetic]\nprocesses = 0\n", "synthetic.processes",
     "expected an integer from 1 to 65536, got 0"),
    ("synthetic is not a table", "synthetic = 1\n", "synthetic", "expected a table, got int"),
    ("unknown section", "[proces]\nprogram = []\n", None,
     "unknown section or key 'proces' (expected [run], [[file]], [[interrupt]], [[process]] "
     "or [synthetic])"),
    ("unknown top-level key", "machine = 'tiny'\n" + script(), None,
     "unknown section or key 'machine'"),
    ("malformed TOML", "[[process]\nprogram = []\n", None, "malformed TOML: "),
    ("unterminated inline table", script('{ op = "exit"'), None, "malformed TOML: "),
    ("duplicate key", "[run]\nmachine = 'a'\nmachine = 'b'\n", None, "malformed TOML: "),
    ("synthetic with processes", "[synthetic]\n" + script(), None,
     "[synthetic] and [[process]] cannot be combined"),
    ("no load", "[run]\nmachine = 'tiny'\n", None,
     "no load: expected [[process]] tables (or [synthetic])"),
    ("empty file", "", None, "no load"),
    ("no processes", "process = []\n", "process", "expected [[process]] tables"),
    ("exec of an unknown file", script('{ op = "exec", file = "sh" }'),
     "process[0].program[0].file", "no [[file]] named 'sh'"),
    ("exec beyond the file", script('{ op = "exec", file = "src", text = 6, data = 4 }',
                                    files=F8),
     "process[0].program[0]", "text and data are pages 0..10 of file 'src', which has 8"),
    ("exec arguments beyond NCARGS", script('{ op = "exec", file = "src", args = "512K" }',
                                            files=F8),
     "process[0].program[0].args", "more than NCARGS"),
    ("a region used after exec", script(MMAP_HEAP, '{ op = "exec", file = "src" }',
                                        '{ op = "touch", region = "heap" }', files=F8),
     "process[0].program[2].region", "region 'heap' is not mapped"),
    ("rawread beyond MAXPHYS", script('{ op = "rawread", size = "1M" }'),
     "process[0].program[0].size", "more than MAXPHYS"),
    ("rawread into too small a region",
     script(MMAP_HEAP, '{ op = "rawread", size = "128K", region = "heap" }'),
     "process[0].program[1].size", "more than region 'heap'"),
    ("interrupt of an unknown kind", '[[interrupt]]\nkind = "disk"\nrate = 1\nsize = 1\n'
     + script(), "interrupt[0].kind", "expected one of net, got 'disk'"),
    ("interrupt rate zero", '[[interrupt]]\nkind = "net"\nrate = 0\nsize = "1K"\n'
     + script(), "interrupt[0].rate", "expected interrupts per second from 1 to 1000000"),
    ("interrupt packet too big", '[[interrupt]]\nkind = "net"\nrate = 10\nsize = "64K"\n'
     + script(), "interrupt[0].size", "more than a packet's 8192 bytes"),
    ("interrupt on no such cpu", '[[interrupt]]\nkind = "net"\nrate = 10\nsize = "1K"\n'
     'cpu = 64\n' + script(), "interrupt[0].cpu", "expected an integer from 0 to 63"),
    ("interrupt without a size", '[[interrupt]]\nkind = "net"\nrate = 10\n' + script(),
     "interrupt[0].size", "missing (required)"),
    ("interrupt with an unknown key", '[[interrupt]]\nkind = "net"\nrate = 10\n'
     'size = "1K"\nirq = 3\n' + script(), "interrupt[0].irq", "unknown key"),
    ("interrupt is not a list", 'interrupt = 1\n' + script(), "interrupt",
     "expected [[interrupt]] tables"),
    ("interrupts with the synthetic load", '[[interrupt]]\nkind = "net"\nrate = 1\n'
     'size = 1\n[synthetic]\n', None, "[synthetic] and [[interrupt]] cannot be combined"),
]


@pytest.mark.parametrize("text, where, expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_script_names_file_key_path_and_expectation(tmp_path, text, where, expected):
    msg = rejects(tmp_path, text)
    if where is not None:
        assert msg.startswith(f"{where}: "), msg
    assert expected in msg, msg


def test_missing_script_by_name_lists_the_known_ones():
    with pytest.raises(BadInput) as ei:
        load_script("no-such-load")
    msg = str(ei.value)
    assert msg.startswith("no-such-load: no such load script") and "heavy-mp" in msg


def test_missing_script_by_path(tmp_path):
    with pytest.raises(BadInput, match=r"nope\.toml: no such load script"):
        load_script(str(tmp_path / "nope.toml"))


def test_script_that_is_not_utf8(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"# caf\xe9\n[[process]]\nprogram = []\n")
    with pytest.raises(BadInput, match=r"latin1\.toml: cannot read: 'utf-8' codec"):
        load_script(str(p))


CLI_BAD = [
    ("unknown op", script('{ op = "fly" }'), "process[0].program[0].op: unknown operation"),
    ("malformed TOML", "[[process]\n", "malformed TOML"),
    ("sparse without stride", script(MMAP_HEAP, '{ op = "touch", region = "heap", '
                                                'pattern = "sparse" }'),
     "process[0].program[1].stride: a sparse touch needs a stride"),
    ("file range overflow",
     script('{ op = "mmap", region = "lib", size = "64K", file = "src" }', files=F8),
     "process[0].program[0]: maps pages 0..16 of file 'src', which has 8"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CLI_BAD], ids=[c[0] for c in CLI_BAD])
def test_smp_run_of_a_bad_script_exits_2_with_one_line(tmp_path, text, expected):
    p = write(tmp_path, text)
    r = smp("run", str(p), "--out", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"smp: {p}: "), r.stderr
    assert expected in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()                # nothing booted, nothing written


def test_more_processes_than_the_machine_allows_exits_2(tmp_path):
    p = write(tmp_path, '[run]\nmachine = "i386mp-2"\n[[process]]\ncount = 600\n'
                        'program = [ { op = "compute", time = "1ms" } ]\n')
    r = smp("run", str(p), "--out", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"smp: {p}: process[0].count: 600 processes at start, but "
                                "machine i386mp-2 has maxproc 512")
    r = smp("run", str(p), "--out", str(tmp_path / "run2"), "-q", "-o", "maxproc=16",
            "-m", "tiny", cwd=tmp_path)
    assert r.returncode == 2 and "machine tiny has maxproc 16" in r.stderr


def test_every_operation_fixture_runs_to_completion(tmp_path):
    out = tmp_path / "run"
    r = smp("run", str(FIXTURES / "every-op.toml"), "--out", str(out), "-q",
            "-o", "diagnostic=on", "--time-limit", "30s", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "done", s["message"]
    procs = s["kernel_counters"]["processes"]
    assert procs["started"] == procs["exited"] == 2 + 2 * 2 * 2     # 2 workers, 2 x 2 forks
    c = s["kernel_counters"]["counters"]
    assert c["forks"] == 8 and c["km_allocs"] >= 6 and c["ubc_faults"] > 0
    assert c["stale_tlb"] == 0


# -- properties: random valid scripts, and corruptions of them ------------------------------

class Raw(str):
    """A TOML value written as it stands (dates, times)."""


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_str(k)


def toml_value(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)      # repr: 1e-05, inf, -inf, 0.25
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(doc: dict) -> str:
    """A document as TOML: scalars first, then [tables], then [[arrays of tables]]."""
    head, body = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            body.append(f"\n[{toml_key(k)}]")
            body += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for t in v:
                body.append(f"\n[[{toml_key(k)}]]")
                for kk, vv in t.items():
                    if isinstance(vv, list) and vv:     # a program: one operation per line
                        items = "".join(f"  {toml_value(x)},\n" for x in vv)
                        body.append(f"{toml_key(kk)} = [\n{items}]")
                    else:
                        body.append(f"{toml_key(kk)} = {toml_value(vv)}")
        else:
            head.append(f"{toml_key(k)} = {toml_value(v)}")
    return "\n".join(head + body) + "\n"


def size_text(draw, pages: int):
    """``pages`` written one of the ways the language allows."""
    forms = [pages, f"{pages * 4}K", f"{pages * 4}k", f"{pages * 4} KiB", f"{pages * 4096}",
             f"{pages * 4096}B", f"{Decimal(pages) / 256}M"]
    if pages % 256 == 0:
        forms.append(f"{pages // 256}M")
    return draw(st.sampled_from(forms))


def duration_text(draw, ns: int):
    """``ns`` (a multiple of 1 us) written one of the ways the language allows."""
    forms = [f"{ns}ns", f"{ns // 1000}us", f"{ns // 1000}µs", f"{Decimal(ns) / MS}ms",
             f"{Decimal(ns) / S}s", f" {Decimal(ns) / MS} ms"]
    if ns % MS == 0:
        forms += [f"{ns // MS}ms", float(Decimal(ns) / S)]
    if ns % S == 0:
        forms.append(ns // S)
    return draw(st.sampled_from(forms))


NAMES = st.text(min_size=1, max_size=6)


class Gen:
    """State while drawing one valid script: files, barriers, rows and totals expected."""

    def __init__(self, draw, files: dict[str, int]):
        self.draw = draw
        self.files = files
        self.barriers: set[str] = set()
        self.ops = 0
        self.expect: dict[Op, int] = {}
        self.compute_ns = 0
        self.mmap_pages = 0

    def count(self, op: Op, n: int = 1) -> None:
        self.expect[op] = self.expect.get(op, 0) + n

    def new_name(self, regions: dict[str, str]) -> str:
        return self.draw(NAMES.filter(lambda n: n not in regions))

    def program(self, regions: dict[str, str], depth: int, forks: int, min_ops: int = 0):
        draw = self.draw
        n = draw(st.integers(min_ops, 5 if depth == 0 else 3))
        ops = [self.op(regions, depth, forks) for _ in range(n)]
        if depth == 0:
            self.count(Op.EXIT)                     # the implicit exit
        return ops

    def op(self, regions: dict[str, str], depth: int, forks: int) -> dict:
        draw = self.draw
        self.ops += 1
        mapped = [r for r, kind in regions.items() if kind == "mmap"]
        kmem = [r for r, kind in regions.items() if kind == "kmalloc"]
        choices = ["compute", "sleep", "exit", "barrier"]
        if self.files:
            choices += ["read", "write"]
        if len(regions) < NSLOTS:
            choices += ["mmap", "mmap", "kmalloc"]
        if mapped:
            choices += ["touch", "touch", "touch", "mlock", "munlock", "munmap"]
        if kmem:
            choices.append("kfree")
        if depth < 3 and self.ops < 40:
            choices += ["repeat", "duration"]
        if forks < 2 and self.ops < 40:
            choices.append("fork")
        op = draw(st.sampled_from(choices))
        t: dict = {"op": op}
        if op in ("compute", "sleep"):
            ns = draw(st.integers(0, 3000)) * US
            t["time"] = duration_text(draw, ns)
            if op == "compute":
                self.compute_ns += ns
            self.count(Op.COMPUTE if op == "compute" else Op.SLEEP)
        elif op == "exit":
            self.count(Op.EXIT)
        elif op == "barrier":
            t["name"] = draw(st.sampled_from(["start", "phase 2", "done", "é"]))
            self.barriers.add(t["name"])
            if draw(st.booleans()):
                t["count"] = draw(st.integers(1, 65536))
            self.count(Op.BARRIER)
        elif op in ("read", "write"):
            fname = draw(st.sampled_from(sorted(self.files)))
            fsize = self.files[fname]
            size = draw(st.integers(1, fsize))
            t["file"] = fname
            t["size"] = size_text(draw, size)
            if draw(st.booleans()):
                t["offset"] = size_text(draw, draw(st.integers(0, fsize - size)))
            self.count(Op.READ if op == "read" else Op.WRITE)
        elif op == "mmap":
            name = self.new_name(regions)
            t["region"] = name
            if self.files and draw(st.booleans()):
                fname = draw(st.sampled_from(sorted(self.files)))
                fsize = self.files[fname]
                pages = draw(st.integers(1, fsize))
                t["file"] = fname
                if draw(st.booleans()):
                    t["offset"] = size_text(draw, draw(st.integers(0, fsize - pages)))
                if draw(st.booleans()):
                    t["share"] = draw(st.sampled_from(["private", "shared"]))
            else:
                pages = draw(st.integers(1, 4096))
                if draw(st.booleans()):
                    t["share"] = "private"
            t["size"] = size_text(draw, pages)
            if draw(st.booleans()):
                t["prot"] = draw(st.sampled_from(["r", "rw", "rx", "rwx", "none"]))
            if draw(st.booleans()):
                t["advice"] = draw(st.sampled_from(["normal", "random", "sequential"]))
            regions[name] = "mmap"
            self.mmap_pages += pages
            self.count(Op.MMAP)
        elif op == "kmalloc":
            name = self.new_name(regions)
            t["region"] = name
            t["size"] = size_text(draw, draw(st.integers(1, 64)))
            if draw(st.booleans()):
                t["kind"] = draw(st.sampled_from(["alloc1", "malloc", "malloc_pageable"]))
            regions[name] = "kmalloc"
            self.count(Op.KMALLOC)
        elif op == "kfree":
            t["region"] = draw(st.sampled_from(kmem))
            del regions[t["region"]]            # freed: a second kfree is an error
            self.count(Op.KFREE)
        elif op == "touch":
            t["region"] = draw(st.sampled_from(mapped))
            pattern = draw(st.sampled_from([None, "sequential", "random", "sparse"]))
            if pattern:
                t["pattern"] = pattern
            for key in ("first", "pages"):
                if draw(st.booleans()):
                    t[key] = size_text(draw, draw(st.integers(0, 64)))
            if pattern == "sparse" or draw(st.booleans()):
                t["stride"] = size_text(draw, draw(st.integers(1, 1024)))
            if draw(st.booleans()):
                t["write"] = draw(st.booleans())
            timed = draw(st.booleans())
            if pattern == "random" and not timed or draw(st.booleans()):
                t["count"] = draw(st.integers(1 if pattern == "random" else 0, 10**6))
            if timed:
                t["time"] = duration_text(draw, draw(st.integers(0, 3000)) * US)
                self.count(Op.DURATION)
                self.count(Op.END)
            self.count(Op.TOUCH)
        elif op in ("mlock", "munlock"):
            t["region"] = draw(st.sampled_from(mapped))
            for key, lo in (("first", 0), ("pages", 0), ("stride", 1)):
                if draw(st.booleans()):
                    t[key] = size_text(draw, draw(st.integers(lo, 1024)))
            self.count(Op.MLOCK if op == "mlock" else Op.MUNLOCK)
        elif op == "munmap":
            t["region"] = draw(st.sampled_from(mapped))
            del regions[t["region"]]            # unmapped: later uses are errors
            self.count(Op.MUNMAP)
        elif op in ("repeat", "duration"):
            if op == "repeat":
                t["count"] = draw(st.integers(1, 10**6))
            else:
                t["time"] = duration_text(draw, draw(st.integers(0, 3000)) * US)
            t["body"] = self.program(regions, depth + 1, forks, min_ops=1)
            self.count(Op.REPEAT if op == "repeat" else Op.DURATION)
            self.count(Op.END)
        elif op == "fork":
            if draw(st.booleans()):
                t["copies"] = draw(st.integers(1, 4096))
            t["program"] = self.program(dict(regions), 0, forks + 1)
            self.count(Op.FORK)
        keys = draw(st.permutations(list(t)))
        return {k: t[k] for k in keys}


@st.composite
def valid_scripts(draw):
    """(document, Gen) for a random valid load script."""
    doc: dict = {}
    if draw(st.booleans()):
        run: dict = {}
        if draw(st.booleans()):
            run["machine"] = draw(st.sampled_from(["i386mp-2", "i386mp-4", "tiny"]))
        if draw(st.booleans()):
            run["kernel"] = draw(st.sampled_from(["default", "netbsd-2001-nosteal"]))
        if draw(st.booleans()):
            run["time_limit"] = duration_text(draw, draw(st.integers(1, 10**6)) * MS)
        if draw(st.booleans()):
            run["description"] = draw(st.text(max_size=20))
        doc["run"] = run
    if draw(st.integers(0, 9)) == 0:
        syn: dict = {}
        for key, lo, hi in (("processes", 1, 64), ("iterations", 1, 10**6), ("buckets", 1, 64),
                            ("handoff_every", 0, 100), ("panic_at", 0, 10)):
            if draw(st.booleans()):
                syn[key] = draw(st.integers(lo, hi))
        if draw(st.booleans()):
            syn["compute"] = duration_text(draw, draw(st.integers(0, 100)) * US)
        doc["synthetic"] = syn
        return doc, None
    files = draw(st.dictionaries(NAMES, st.integers(1, 512), max_size=3))
    if files:
        doc["file"] = [{"name": n, "size": size_text(draw, p)} for n, p in files.items()]
    gen = Gen(draw, files)
    procs = []
    for _ in range(draw(st.integers(1, 3))):
        p: dict = {}
        if draw(st.booleans()):
            p["name"] = draw(NAMES)
        if draw(st.booleans()):
            p["count"] = draw(st.integers(1, 64))
        if draw(st.booleans()):
            p["uid"] = draw(st.integers(0, 65535))
        if draw(st.booleans()):
            p["cpu"] = draw(st.integers(-1, 63))
        p["program"] = gen.program({}, 0, 0)
        procs.append(p)
    doc["process"] = procs
    return doc, gen


PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scripts")


@PROPERTY
@given(valid_scripts())
def test_random_valid_scripts_compile_to_the_operations_they_list(scratch, drawn):
    doc, gen = drawn
    s = load_script(str(write(scratch, to_toml(doc), "valid.toml")))
    if gen is None:
        assert s.load.nprocs >= 1
        return
    table = s.load.table.tolist()
    got: dict[Op, int] = {}
    for r in table:
        got[Op(r[0])] = got.get(Op(r[0]), 0) + 1
    assert got == gen.expect
    assert sum(r[1] for r in table if r[0] == Op.COMPUTE) == gen.compute_ns
    assert sum(r[2] for r in table if r[0] == Op.MMAP) == gen.mmap_pages
    for pc, r in enumerate(table):
        if r[0] in (Op.REPEAT, Op.DURATION):          # every block's END points back at it
            assert table[r[-1]][:2] == [Op.END, pc]
        if r[0] == Op.FORK:                            # every child program is in the table
            assert 0 < r[1] < len(table)
    assert table[-1][0] == Op.EXIT
    assert s.load.maxproc >= s.load.initial == sum(p.get("count", 1) for p in doc["process"])


SCALARS = st.one_of(
    st.booleans(),
    st.integers(-10**6, 10**9),
    st.floats(-1e6, 1e6),
    st.sampled_from([math.inf, -math.inf, math.nan, 0.5, -0.0]),
    st.text(max_size=8),
    st.sampled_from(["", "4K", "16M", "0", "-1", "200ms", "1e9s", "sparse", "random",
                     "mmap", "touch", "heap", "private", "shared", "alloc1", "rw"]),
    st.sampled_from([Raw("1979-05-27"), Raw("07:32:00"), Raw("1979-05-27T07:32:00Z")]),
)
# Key names a user could type; control characters and line separators are left out because
# they make a two-line message (test_an_unknown_key_with_a_newline_gives_a_one_line_message).
KEY_NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                    min_size=1, max_size=6) | st.sampled_from(
    ["op", "region", "size", "count", "stride", "time", "body", "program", "file", "name"])
# Garbage is text and TOML punctuation, but no long digit strings: a number grown past 64 bits
# is a known crash (test_numbers_beyond_64_bits_are_rejected).
GARBAGE = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Nd")), max_size=6),
    st.lists(st.sampled_from(["[", "]", "{", "}", "[[", "]]", "=", ",", '"', "'", "\n", " ",
                              "#", ".", "op", "x", "1", "true", '"mmap"', "[[process]]",
                              "[run]", "program = []"]), max_size=4).map("".join),
)


def _slots(v, out: list) -> list:
    """Every (container, key) pair in a parsed document, depth first."""
    if isinstance(v, dict):
        for k in list(v):
            out.append((v, k))
            _slots(v[k], out)
    elif isinstance(v, list):
        for i in range(len(v)):
            out.append((v, i))
            _slots(v[i], out)
    return out


@st.composite
def corrupted_scripts(draw):
    doc, _ = draw(valid_scripts())
    doc = copy.deepcopy(doc)
    how = draw(st.sampled_from(["drop", "retype", "add key", "garbage", "truncate",
                                "drop line"]))
    if how in ("drop", "retype", "add key"):
        slots = _slots(doc, [])
        if how == "add key":
            tables = [c[k] for c, k in slots if isinstance(c[k], dict)] + [doc]
            draw(st.sampled_from(tables))[draw(KEY_NAMES)] = draw(SCALARS)
        else:
            container, key = draw(st.sampled_from(slots))
            if how == "drop":
                del container[key]
            else:
                values = SCALARS
                if key not in ("op", "region"):    # unhashable op/region: known crash
                    values = values | st.lists(SCALARS, max_size=3) | st.dictionaries(
                        KEY_NAMES, SCALARS, max_size=2)
                container[key] = draw(values)
        return how, to_toml(doc)
    text = to_toml(doc)
    if how == "garbage":
        at = draw(st.integers(0, len(text)))
        return how, text[:at] + draw(GARBAGE) + text[at:]
    if how == "truncate":
        return how, text[:draw(st.integers(0, len(text)))]
    lines = text.splitlines(keepends=True)
    del lines[draw(st.integers(0, len(lines) - 1))]
    return how, "".join(lines)


@PROPERTY
@given(corrupted_scripts())
def test_corrupted_scripts_compile_or_give_one_line_of_bad_input(scratch, corrupted):
    _how, text = corrupted
    p = write(scratch, text, "corrupt.toml")
    try:
        load_script(str(p))
    except BadInput as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, msg
        assert msg.startswith(f"{p}: ") and len(msg) > len(f"{p}: "), msg


def test_corrupted_scripts_through_the_cli_exit_2_without_a_traceback(tmp_path):
    """A few fixed corruptions of a real script, through ``python -m smp run``."""
    good = (FIXTURES / "every-op.toml").read_text(encoding="utf-8")
    cut = good.index("{ op = \"touch\", region = \"shm\"")
    corruptions = {
        "dropped key": good.replace('{ op = "mmap", region = "heap", size = "512K" }',
                                    '{ op = "mmap", region = "heap" }'),
        "wrong type": good.replace("count = 64", "count = [64]"),
        "garbage": good[:cut] + '{ = ]] "' + good[cut:],
        "truncated": good[:cut + 10],
    }
    for what, text in corruptions.items():
        p = write(tmp_path, text, f"{what.replace(' ', '-')}.toml")
        r = smp("run", str(p), "--out", str(tmp_path / "run"), "-q", cwd=tmp_path)
        assert r.returncode == 2, (what, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"smp: {p}: "), (what, r.stderr)
        assert "Traceback" not in r.stderr


# -- bugs and gaps of the validator found by these tests, fixed and kept as regressions --------

@pytest.mark.parametrize("op", ['["mmap"]', "{ name = 'mmap' }"])
def test_an_operation_name_that_is_a_list_or_table_is_bad_input(tmp_path, op):
    assert rejects(tmp_path, script(f"{{ op = {op} }}")).startswith(
        "process[0].program[0].op: ")


@pytest.mark.parametrize("op", ["mmap", "kmalloc"])
def test_a_region_name_that_is_a_list_is_bad_input(tmp_path, op):
    assert rejects(tmp_path, script(f'{{ op = "{op}", region = ["heap"], size = "4K" }}')) \
        .startswith("process[0].program[0].region: expected a string")


@pytest.mark.parametrize("op, key", [
    ('{ op = "touch", region = "heap", pages = 100000000000000000000 }', "pages"),
    ('{ op = "mmap", region = "big", size = "99999999999999999999G" }', "size"),
    ('{ op = "compute", time = "99999999999999s" }', "time"),
])
def test_numbers_beyond_64_bits_are_rejected(tmp_path, op, key):
    assert f".{key}: " in rejects(tmp_path, script(MMAP_HEAP, op))


def test_deeply_nested_toml_is_bad_input(tmp_path):
    assert "malformed TOML" in rejects(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")


def test_a_timed_touch_inside_the_deepest_nesting_is_rejected(tmp_path):
    body = '{ op = "touch", region = "heap", time = "1ms" }'
    for _ in range(MAX_NEST):
        body = f'{{ op = "repeat", count = 2, body = [ {body} ] }}'
    assert "nested deeper" in rejects(tmp_path, script(MMAP_HEAP, body))


def test_an_mmap_larger_than_the_user_address_space_is_rejected(tmp_path):
    msg = rejects(tmp_path, script('{ op = "mmap", region = "big", size = "5G" }'))
    assert msg.startswith("process[0].program[0].size: ")


@pytest.mark.parametrize("op", ["read", "write"])
def test_io_beyond_the_end_of_a_file_is_rejected(tmp_path, op):
    msg = rejects(tmp_path, script(f'{{ op = "{op}", file = "src", offset = "1M", '
                                   'size = "4K" }', files=F8))
    assert msg.startswith("process[0].program[0]") and "'src'" in msg


def test_a_strided_mlock_without_pages_is_not_the_whole_region(tmp_path):
    text = script('{ op = "mmap", region = "vast", size = "2560M" }',
                  '{ op = "mlock", region = "vast", stride = "4M" }')
    try:
        t = load_script(str(write(tmp_path, text))).load.table.tolist()
    except BadInput as e:                     # either fix will do: reject it, or honour it
        assert "process[0].program[1]" in str(e)
    else:
        assert t[1][3] != 0, "count 0 means the whole region"


@pytest.mark.parametrize("ops", [
    ('{ op = "kmalloc", region = "k", size = "4K" }', '{ op = "touch", region = "k" }'),
    ('{ op = "kmalloc", region = "k", size = "4K" }', '{ op = "munmap", region = "k" }'),
    (MMAP_HEAP, '{ op = "kfree", region = "heap" }'),
], ids=["touch kmalloc", "munmap kmalloc", "kfree mmap"])
def test_a_region_is_used_as_the_kind_it_was_made(tmp_path, ops):
    assert rejects(tmp_path, script(*ops)).startswith("process[0].program[1]")


def test_a_region_can_be_mapped_again_after_munmap(tmp_path):
    t = rows(tmp_path, MMAP_HEAP, '{ op = "munmap", region = "heap" }', MMAP_HEAP)
    assert [r[0] for r in t] == [Op.MMAP, Op.MUNMAP, Op.MMAP, Op.EXIT]


def test_an_unknown_key_with_a_newline_gives_a_one_line_message(tmp_path):
    rejects(tmp_path, script('{ op = "exit", "bad\\nkey" = 1 }'))


def test_an_offset_without_a_file_is_rejected(tmp_path):
    msg = rejects(tmp_path, script('{ op = "mmap", region = "h", size = "4K", offset = 1 }'))
    assert msg.startswith("process[0].program[0].offset: ")


def test_a_barrier_reached_by_fork_children_counts_them(tmp_path):
    t = rows(tmp_path, '{ op = "fork", copies = 3, program = [ '
                       '{ op = "barrier", name = "go" } ] }', '{ op = "barrier", name = "go" }')
    assert [r[2] for r in t if r[0] == Op.BARRIER] == [4, 4]


def test_too_many_processes_names_the_count_key(tmp_path):
    p = write(tmp_path, '[run]\nmachine = "i386mp-2"\n[[process]]\ncount = 600\n'
                        'program = []\n')
    r = smp("run", str(p), "--out", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert r.returncode == 2 and f"{p}: process[0].count" in r.stderr
