//! pprof's profile.proto, gzipped: what `go tool pprof` and the tools around it read.
//!
//! The messages are declared here with prost's derive, field numbers as in pprof's
//! profile.proto; no build step, no protoc.

use std::{collections::HashMap, io::Write};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::Report;
use crate::stacks::symbolize::Frame;

#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

/// A sample's tag: `key` and a string (`str`) or a number; `go tool pprof -tags` lists them,
/// `-tagfocus=verdict=leaking` keeps the samples that carry one.
#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
    #[prost(int64, tag = "3")]
    num: i64,
    #[prost(int64, tag = "4")]
    num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    memory_start: u64,
    #[prost(uint64, tag = "3")]
    memory_limit: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(int64, tag = "6")]
    build_id: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
    #[prost(bool, tag = "8")]
    has_filenames: bool,
    #[prost(bool, tag = "9")]
    has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(uint64, tag = "3")]
    address: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

/// The profile under construction: string, function, location and mapping tables, each
/// entry once.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<u64, u64>,
    mappings: HashMap<String, usize>,
}

impl Builder {
    fn string(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), index);
        index
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = self.string(&frame.name());
        let file = self.string(frame.file.as_deref().unwrap_or(""));
        if let Some(&id) = self.functions.get(&(name, file)) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename: file,
        });
        self.functions.insert((name, file), id);
        id
    }

    fn mapping(&mut self, frame: &Frame, address: u64) -> u64 {
        let Some(module) = &frame.module else {
            return 0;
        };
        let index = match self.mappings.get(module) {
            Some(&index) => index,
            None => {
                let filename = self.string(module);
                let build_id = self.string(frame.build_id.as_deref().unwrap_or(""));
                self.profile.mapping.push(Mapping {
                    id: self.profile.mapping.len() as u64 + 1,
                    memory_start: address,
                    memory_limit: address + 1,
                    filename,
                    build_id,
                    has_functions: true,
                    has_filenames: true,
                    has_line_numbers: true,
                    has_inline_frames: true,
                });
                self.mappings
                    .insert(module.clone(), self.profile.mapping.len() - 1);
                self.profile.mapping.len() - 1
            }
        };
        let mapping = &mut self.profile.mapping[index];
        mapping.memory_start = mapping.memory_start.min(address);
        mapping.memory_limit = mapping.memory_limit.max(address + 1);
        mapping.id
    }

    /// One location per address; its inlined frames become its lines, innermost first.
    fn location(&mut self, frames: &[Frame]) -> u64 {
        let address = parse_address(&frames[0].address);
        if let Some(&id) = self.locations.get(&address) {
            return id;
        }
        let mapping_id = self.mapping(&frames[0], address);
        let line = frames
            .iter()
            .map(|frame| Line {
                function_id: self.function(frame),
                line: i64::from(frame.line.unwrap_or(0)),
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
        });
        self.locations.insert(address, id);
        id
    }
}

fn parse_address(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or(0)
}

/// The leak kinds' sample types, after the four others when a scan ran.
const KIND_TYPES: [(&str, &str); 8] = [
    ("definitely_lost_space", "bytes"),
    ("definitely_lost_objects", "count"),
    ("indirectly_lost_space", "bytes"),
    ("indirectly_lost_objects", "count"),
    ("possibly_lost_space", "bytes"),
    ("possibly_lost_objects", "count"),
    ("still_reachable_space", "bytes"),
    ("still_reachable_objects", "count"),
];

/// The report as a gzipped profile.proto with inuse_space, inuse_objects, alloc_space and
/// alloc_objects, and after a scan a space and an objects type per leak kind
/// (`-sample_index=definitely_lost_space`); `go tool pprof` shows inuse_space first. Each
/// sample (a site) carries its verdict as the tag `verdict` and its label as the tag `site`
/// (its stack stays whole).
pub fn pprof(report: &Report) -> std::io::Result<Vec<u8>> {
    let mut builder = Builder::default();
    builder.string("");
    let kinds = if report.scan.is_some() {
        &KIND_TYPES[..]
    } else {
        &[]
    };
    for &(kind, unit) in [
        ("inuse_space", "bytes"),
        ("inuse_objects", "count"),
        ("alloc_space", "bytes"),
        ("alloc_objects", "count"),
    ]
    .iter()
    .chain(kinds)
    {
        let value_type = ValueType {
            r#type: builder.string(kind),
            unit: builder.string(unit),
        };
        builder.profile.sample_type.push(value_type);
    }
    builder.profile.default_sample_type = builder.string("inuse_space");
    builder.profile.duration_nanos = (report.header.duration_s * 1e9) as i64;
    for site in &report.sites {
        // Frames of one address (inlined ones) are adjacent: one location each.
        let location_id = site
            .frames
            .chunk_by(|a, b| a.address == b.address)
            .map(|frames| builder.location(frames))
            .collect();
        let stats = &site.stats;
        let mut label = vec![
            Label {
                key: builder.string("verdict"),
                str: builder.string(site.verdict.as_str()),
                num: 0,
                num_unit: 0,
            },
            Label {
                key: builder.string("site"),
                str: builder.string(&site.site),
                num: 0,
                num_unit: 0,
            },
        ];
        // A stack cut short: `-tags` says where, and how many stacks the sample merged.
        if let Some(cut) = site.stack_cut {
            label.push(Label {
                key: builder.string("stack_cut"),
                str: builder.string(&cut.to_string()),
                num: 0,
                num_unit: 0,
            });
        }
        let mut value: Vec<i64> = [
            stats.live_bytes,
            stats.live_allocations,
            stats.alloc_bytes,
            stats.allocs,
        ]
        .map(|v| v as i64)
        .to_vec();
        if report.scan.is_some() {
            let amounts = site.scan.unwrap_or_default();
            for (_, amount) in amounts.named() {
                value.extend([amount.bytes as i64, amount.blocks as i64]);
            }
        }
        builder.profile.sample.push(Sample {
            location_id,
            label,
            value,
        });
    }
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&builder.profile.encode_to_vec())?;
    encoder.finish()
}
