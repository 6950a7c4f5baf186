//! Resource variables and control flow: VAR_HANDLE, READ_VARIABLE and ASSIGN_VARIABLE
//! (the importer tracks each variable's current value and makes a READ before any ASSIGN a
//! state input, see [`super::super`]), and IF, inlined when its condition is known at load.

use tract_core::internal::*;
use tract_core::ops::cast::cast;
use tract_core::ops::logic::IfThenElse;

use super::super::Graph;
use super::Node;

impl Graph<'_, '_> {
    pub(super) fn var_handle(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let o = options!(n, builtin_options_as_var_handle_options);
        let key = format!("{}/{}", o.container().unwrap_or(""), o.shared_name().unwrap_or(""));
        self.vars.slot(&key);
        self.handles.insert(n.outputs[0], key);
        Ok(tvec!())
    }

    pub(super) fn read_variable(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let key = self.handle(n)?;
        let info = self.info(n.outputs[0])?;
        let existing = {
            let slot = self.vars.slot(&key);
            slot.current.or(slot.source)
        };
        let o = match existing {
            Some(o) => o,
            None => {
                let name = self.name(&format!("state.{key}"));
                let fact = info.graph_dt().fact(info.shape.clone());
                let o = self.target.add_source(name, fact)?;
                self.vars.slot(&key).source = Some(o);
                o
            }
        };
        Ok(tvec!(o))
    }

    pub(super) fn assign_variable(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let key = self.handle(n)?;
        let mut v = self.input(n, 1)?;
        let source = self.vars.slot(&key).source;
        if let Some(src) = source {
            let want = self.fact(src)?;
            let got = self.fact(v)?;
            ensure!(want.shape == got.shape, "variable {key:?} assigned shape {:?}, holds {:?}", got.shape, want.shape);
            if want.datum_type != got.datum_type {
                v = self.wire(&format!("{l}.cast"), cast(want.datum_type), &[v])?[0];
            }
        }
        self.vars.slot(&key).current = Some(v);
        Ok(tvec!())
    }

    fn handle(&self, n: &Node) -> TractResult<String> {
        let ix = *n.inputs.first().context("missing resource input")?;
        self.handles.get(&ix).cloned().context("resource does not come from a VAR_HANDLE of this subgraph")
    }

    pub(super) fn if_op(&mut self, n: &Node) -> TractResult<TVec<OutletId>> {
        let l = n.label.as_str();
        let o = options!(n, builtin_options_as_if_options);
        let (then_ix, else_ix) = (o.then_subgraph_index().max(0) as usize, o.else_subgraph_index().max(0) as usize);
        let cond = self.input(n, 0)?;
        let args = (1..n.inputs.len()).map(|k| self.input(n, k)).collect::<TractResult<Vec<_>>>()?;
        if let Some(k) = self.fact(cond)?.konst.clone() {
            let taken = if k.cast_to_scalar::<bool>()? { then_ix } else { else_ix };
            return self.inline(taken, &args);
        }
        let facts = args.iter().map(|a| self.fact(*a)).collect::<TractResult<Vec<_>>>()?;
        let then_body = self.standalone(then_ix, &facts)?;
        let else_body = self.standalone(else_ix, &facts)?;
        let cond = self.wire(&format!("{l}.cond"), cast(bool::datum_type()), &[cond])?[0];
        let mapping: Vec<usize> = (1..=args.len()).collect();
        let op = IfThenElse { then_body, then_input_mapping: mapping.clone(), else_body, else_input_mapping: mapping };
        let mut inputs = vec![cond];
        inputs.extend(args);
        self.wire(l, op, &inputs)
    }
}
