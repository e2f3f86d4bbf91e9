//! The peer for Picket's AWS VPC flow log parser: Vector's VRL `parse_aws_vpc_flow_log`, run the
//! way Vector runs it (a compiled VRL program, one event per record), over the same file of
//! records that `picket-bench` parses with Picket's parser in the same run.
//!
//! Usage: `picket-bench-vrl FILE`. Prints one line: `records=N seconds=S fields=F`, where F is
//! the number of fields VRL produced over all records (a check that it parsed them all).

use std::{collections::BTreeMap, time::Instant};

use vrl::{
    compiler::{Context, Function, TargetValue, TimeZone, state::RuntimeState},
    stdlib::ParseAwsVpcFlowLog,
    value::{Secrets, Value},
};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: picket-bench-vrl FILE (AWS VPC flow log records, default format)");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("reading {path}: {e}");
        std::process::exit(1);
    });
    let fns: Vec<Box<dyn Function>> = vec![Box::new(ParseAwsVpcFlowLog)];
    let program = vrl::compiler::compile(". = parse_aws_vpc_flow_log!(.message)", &fns)
        .expect("the VRL program compiles")
        .program;
    let tz = TimeZone::default();
    let mut state = RuntimeState::default();
    let (mut records, mut fields) = (0u64, 0u64);
    let t0 = Instant::now();
    for line in text.lines() {
        let mut event = BTreeMap::new();
        event.insert("message".into(), Value::from(line));
        let mut target = TargetValue {
            value: Value::Object(event),
            metadata: Value::Object(BTreeMap::new()),
            secrets: Secrets::default(),
        };
        let mut ctx = Context::new(&mut target, &mut state, &tz);
        match program.resolve(&mut ctx) {
            Ok(Value::Object(m)) => fields += m.len() as u64,
            Ok(other) => panic!("unexpected result {other:?}"),
            Err(e) => panic!("VRL rejected {line:?}: {e}"),
        }
        records += 1;
    }
    let seconds = t0.elapsed().as_secs_f64();
    println!("records={records} seconds={seconds:.6} fields={fields}");
}
