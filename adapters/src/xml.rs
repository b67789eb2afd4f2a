//! A small element tree over quick-xml, for vim25.
//!
//! vim25 is polymorphic (`xsi:type` decides what an element holds) and reconfiguring a disk
//! means sending back the device object the server gave us. A tree read and written with
//! quick-xml's reader and writer handles both without hand-formatted XML: the writer escapes
//! every name, attribute and text.
//!
//! The reader is bounded: documents nest at most [`MAX_DEPTH`] elements deep (the tree is
//! recursive, and dropping, cloning or writing a deeper one would overflow the stack), and
//! only the five predefined entities and character references are expanded, so no entity can
//! grow a document. How many bytes reach it is bounded by the caller (see
//! `vsphere::soap::MAX_RESPONSE_BYTES`).

use quick_xml::{
    escape::resolve_predefined_entity,
    events::{BytesEnd, BytesStart, BytesText, Event},
    Reader, Writer,
};

/// How deeply elements may nest in a document [`Element::parse`] accepts. vim25 responses
/// nest about 15 levels (a virtual disk's backing chain in a property-collector page) and
/// libvirt domain XML about 6; the limit leaves ample room and keeps every recursive walk of
/// the tree (drop, clone, write) far from the end of a 2 MiB thread stack.
pub const MAX_DEPTH: usize = 128;

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error(transparent)]
    Syntax(#[from] quick_xml::Error),
    #[error("{0}")]
    Malformed(&'static str),
    #[error("elements nest deeper than {limit} levels")]
    TooDeep { limit: usize },
}

impl From<quick_xml::encoding::EncodingError> for XmlError {
    fn from(e: quick_xml::encoding::EncodingError) -> Self {
        Self::Syntax(quick_xml::Error::Encoding(e))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Qualified name as written (`soapenv:Body`); matching uses [`Element::local_name`].
    pub name: String,
    /// Attributes with qualified names (`xsi:type`, `type`).
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Character data directly inside the element (vim25 has no mixed content).
    pub text: String,
}

fn local(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, l)| l)
}

impl Element {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// `<name>text</name>`
    pub fn text(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::new(name)
        }
    }

    /// A managed object reference: `<name type="Kind">value</name>`.
    pub fn moref(name: impl Into<String>, moref: &MoRef) -> Self {
        Self::text(name, &moref.value).attr("type", &moref.kind)
    }

    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Declares the vim25 polymorphic type.
    pub fn xsi_type(self, ty: impl Into<String>) -> Self {
        self.attr("xsi:type", ty)
    }

    pub fn child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    pub fn children(mut self, children: impl IntoIterator<Item = Element>) -> Self {
        self.children.extend(children);
        self
    }

    pub fn local_name(&self) -> &str {
        local(&self.name)
    }

    /// An attribute by qualified name, or by local name when no prefix is given
    /// (`type` never matches `xsi:type`).
    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `xsi:type` of the element, whatever prefix the server bound to XMLSchema-instance.
    pub fn type_name(&self) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n.contains(':') && local(n) == "type")
            .map(|(_, v)| local(v))
    }

    pub fn first(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local_name() == name)
    }

    pub fn first_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find(|c| c.local_name() == name)
    }

    /// Takes the first child named `name` out of this element (no copy of its subtree).
    pub fn take_first(&mut self, name: &str) -> Option<Element> {
        let at = self.children.iter().position(|c| c.local_name() == name)?;
        Some(self.children.remove(at))
    }

    /// Takes every child named `name` out of this element, in order.
    pub fn take_all(&mut self, name: &str) -> Vec<Element> {
        let (taken, kept) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|c| c.local_name() == name);
        self.children = kept;
        taken
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.local_name() == name)
    }

    /// Follows a path of child names.
    pub fn path(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |e, name| e.first(name))
    }

    pub fn path_text(&self, path: &[&str]) -> Option<&str> {
        self.path(path).map(|e| e.text.as_str())
    }

    pub fn path_i64(&self, path: &[&str]) -> Option<i64> {
        self.path_text(path)?.trim().parse().ok()
    }

    pub fn as_moref(&self) -> Option<MoRef> {
        Some(MoRef {
            kind: self.get_attr("type")?.to_string(),
            value: self.text.trim().to_string(),
        })
    }

    /// Replaces the text of the child `name`, creating it (at `position` among the children,
    /// to keep the schema's element order) when missing.
    pub fn set_child_text(&mut self, name: &str, text: impl Into<String>, position: usize) {
        let text = text.into();
        match self.first_mut(name) {
            Some(c) => c.text = text,
            None => {
                let at = position.min(self.children.len());
                self.children.insert(at, Element::text(name, text));
            }
        }
    }

    /// Prepares an element taken from a response for sending back: whatever prefix the server
    /// bound to XMLSchema-instance (Go's encoder uses `XMLSchema-instance:`) becomes the
    /// `xsi:` our envelope declares, and the server's namespace declarations are dropped.
    pub fn rebind_xsi(&mut self) {
        self.attrs.retain(|(n, _)| !n.starts_with("xmlns"));
        for (name, _) in &mut self.attrs {
            if name.contains(':') && local(name) == "type" {
                *name = "xsi:type".into();
            }
        }
        for c in &mut self.children {
            c.rebind_xsi();
        }
    }

    pub fn to_xml(&self) -> Vec<u8> {
        let mut writer = Writer::new(Vec::new());
        write(&mut writer, self);
        writer.into_inner()
    }

    /// Reads a document of at most [`MAX_DEPTH`] levels.
    pub fn parse(xml: &[u8]) -> Result<Element, XmlError> {
        Self::parse_with_depth(xml, MAX_DEPTH)
    }

    /// Reads a document whose elements nest at most `max_depth` levels (the root is level 1).
    /// The tree is built without recursion, so a deeper document is refused before any
    /// recursive code sees it.
    pub fn parse_with_depth(xml: &[u8], max_depth: usize) -> Result<Element, XmlError> {
        let text = String::from_utf8_lossy(xml);
        let mut reader = Reader::from_str(&text);
        let mut stack: Vec<Element> = vec![Element::new("#document")];
        let too_deep = XmlError::TooDeep { limit: max_depth };
        loop {
            match reader.read_event()? {
                Event::Start(start) => {
                    // `stack` holds the document and the open elements: this one's level.
                    if stack.len() > max_depth {
                        return Err(too_deep);
                    }
                    stack.push(open(&start)?)
                }
                Event::Empty(start) => {
                    if stack.len() > max_depth {
                        return Err(too_deep);
                    }
                    let e = open(&start)?;
                    top(&mut stack).children.push(e);
                }
                Event::End(_) => {
                    let done = stack.pop().unwrap_or_default();
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => return Err(XmlError::Malformed("unbalanced end tag")),
                    }
                }
                Event::Text(t) => {
                    let s = t.decode()?;
                    top(&mut stack).text.push_str(&s);
                }
                Event::CData(c) => {
                    let s = c.decode()?;
                    top(&mut stack).text.push_str(&s);
                }
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref()? {
                        Some(ch) => ch.to_string(),
                        None => {
                            let name = r.decode()?;
                            resolve_predefined_entity(&name)
                                .ok_or(XmlError::Malformed("unknown entity"))?
                                .to_string()
                        }
                    };
                    top(&mut stack).text.push_str(&resolved);
                }
                Event::Eof => break,
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        let mut document = stack.pop().unwrap_or_default();
        if !stack.is_empty() || document.children.len() != 1 {
            return Err(XmlError::Malformed("expected exactly one root element"));
        }
        Ok(document.children.remove(0))
    }
}

/// Parses `bytes` and, when they are a document, checks that what the writer makes of the
/// tree reads back as the same tree: the writer escapes whatever a server sent. The fuzz
/// target `xml_round_trip` feeds it arbitrary bytes (cargo feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub fn check_round_trip(bytes: &[u8]) {
    let Ok(tree) = Element::parse(bytes) else {
        return;
    };
    let written = tree.to_xml();
    let again = Element::parse(&written).unwrap_or_else(|e| {
        panic!(
            "the writer made an unreadable document ({e}): {}",
            String::from_utf8_lossy(&written)
        )
    });
    assert_eq!(again, tree, "the written tree reads back unchanged");
    let mut rebound = tree;
    rebound.rebind_xsi();
    let _ = rebound.to_xml();
}

fn top(stack: &mut [Element]) -> &mut Element {
    stack
        .last_mut()
        .expect("the document element is never popped before Eof")
}

fn open(start: &BytesStart<'_>) -> Result<Element, XmlError> {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    // quick-xml reads `< />` as an element without a name (written back: `</>`), and
    // `<\x11/ >` as one named `\x11/` (written back: `<\x11/>`, an empty element): neither
    // is an XML name.
    if !is_name(&name) {
        return Err(XmlError::Malformed(
            "an element name that is not an XML name",
        ));
    }
    let mut e = Element::new(name);
    for attr in start.attributes() {
        let attr = attr.map_err(quick_xml::Error::InvalidAttr)?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        if !is_name(&key) {
            return Err(XmlError::Malformed(
                "an attribute name that is not an XML name",
            ));
        }
        let value = attr.unescape_value()?.into_owned();
        e.attrs.push((key, value));
    }
    Ok(e)
}

/// Whether `name` can be written back as the same name: not empty, and free of the characters
/// that end or break a tag (whitespace, controls, `/ < > = " ' &`).
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/<>=\"'&".contains(c))
}

fn write(writer: &mut Writer<Vec<u8>>, e: &Element) {
    let mut start = BytesStart::new(e.name.as_str());
    for (k, v) in &e.attrs {
        start.push_attribute((k.as_str(), v.as_str()));
    }
    // Writing into a Vec cannot fail.
    if e.children.is_empty() && e.text.is_empty() {
        let _ = writer.write_event(Event::Empty(start));
        return;
    }
    let _ = writer.write_event(Event::Start(start));
    if !e.text.is_empty() {
        let _ = writer.write_event(Event::Text(BytesText::new(&e.text)));
    }
    for c in &e.children {
        write(writer, c);
    }
    let _ = writer.write_event(Event::End(BytesEnd::new(e.name.as_str())));
}

/// A vim25 managed object reference (`HostSystem:host-21`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_children_moves_them_out_in_order_and_keeps_the_rest() {
        let mut e = Element::parse(b"<r><a>1</a><b>x</b><a>2</a><c/></r>").unwrap();
        let a: Vec<String> = e.take_all("a").into_iter().map(|a| a.text).collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(e.take_first("b").map(|b| b.text).as_deref(), Some("x"));
        assert!(e.take_first("b").is_none());
        let left: Vec<&str> = e.children.iter().map(Element::local_name).collect();
        assert_eq!(left, ["c"]);
    }

    #[test]
    fn parses_prefixes_attributes_entities_and_round_trips() {
        let xml = br#"<?xml version="1.0"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soapenv:Body>
    <val xsi:type="ManagedObjectReference" type="HostSystem">host-21</val>
    <name>a &amp; b &#60;c&gt;</name>
    <empty/>
  </soapenv:Body>
</soapenv:Envelope>"#;
        let root = Element::parse(xml).unwrap();
        assert_eq!(root.local_name(), "Envelope");
        let body = root.first("Body").unwrap();
        let val = body.first("val").unwrap();
        assert_eq!(val.type_name(), Some("ManagedObjectReference"));
        assert_eq!(val.as_moref(), Some(MoRef::new("HostSystem", "host-21")));
        assert_eq!(body.path_text(&["name"]), Some("a & b <c>"));
        assert!(body.first("empty").is_some());

        let again = Element::parse(&root.to_xml()).unwrap();
        assert_eq!(again.path_text(&["Body", "name"]), Some("a & b <c>"));
        assert_eq!(
            again.path(&["Body", "val"]).unwrap().as_moref(),
            val.as_moref()
        );
    }

    #[test]
    fn writer_escapes_hostile_text_and_attributes() {
        let e = Element::text("userName", "</userName><x>&").attr("note", "\"'<>");
        let xml = String::from_utf8(e.to_xml()).unwrap();
        assert!(!xml.contains("<x>"), "{xml}");
        let back = Element::parse(xml.as_bytes()).unwrap();
        assert_eq!(back.text, "</userName><x>&");
        assert_eq!(back.get_attr("note"), Some("\"'<>"));
    }

    #[test]
    fn set_child_text_keeps_schema_order_when_inserting() {
        let mut alloc = Element::new("storageIOAllocation")
            .child(Element::text("limit", "-1"))
            .child(Element::text("reservation", "0"));
        alloc.set_child_text("limit", "100", 0);
        alloc.set_child_text("shares", "x", 1);
        let names: Vec<_> = alloc.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["limit", "shares", "reservation"]);
        assert_eq!(alloc.path_text(&["limit"]), Some("100"));
    }

    #[test]
    fn rebind_xsi_moves_any_instance_prefix_to_xsi() {
        let xml = br#"<val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ArrayOfVirtualDevice"><VirtualDevice XMLSchema-instance:type="VirtualDisk"><backing XMLSchema-instance:type="VirtualDiskFlatVer2BackingInfo"><datastore type="Datastore">ds-1</datastore></backing></VirtualDevice></val>"#;
        let mut e = Element::parse(xml).unwrap();
        e.rebind_xsi();
        assert_eq!(
            e.attrs,
            vec![("xsi:type".to_string(), "ArrayOfVirtualDevice".to_string())]
        );
        let backing = e.path(&["VirtualDevice", "backing"]).unwrap();
        assert_eq!(
            backing.get_attr("xsi:type"),
            Some("VirtualDiskFlatVer2BackingInfo")
        );
        assert_eq!(
            backing.first("datastore").unwrap().get_attr("type"),
            Some("Datastore")
        );
    }

    #[test]
    fn rejects_truncated_documents() {
        assert!(Element::parse(b"<a><b></b>").is_err());
    }

    fn nested(levels: usize, innermost: &str) -> String {
        format!(
            "{}{innermost}{}",
            "<a>".repeat(levels),
            "</a>".repeat(levels)
        )
    }

    #[test]
    fn documents_up_to_the_depth_limit_are_read() {
        let root = Element::parse(nested(MAX_DEPTH, "x").as_bytes()).unwrap();
        let mut e = &root;
        let mut depth = 1;
        while let Some(c) = e.first("a") {
            e = c;
            depth += 1;
        }
        assert_eq!((depth, e.text.as_str()), (MAX_DEPTH, "x"));
        // An empty element at the last level counts as one.
        assert!(Element::parse(nested(MAX_DEPTH - 1, "<b/>").as_bytes()).is_ok());
    }

    #[test]
    fn a_document_one_level_too_deep_is_refused_by_name() {
        for doc in [nested(MAX_DEPTH + 1, ""), nested(MAX_DEPTH, "<b/>")] {
            let err = Element::parse(doc.as_bytes()).unwrap_err();
            assert!(
                matches!(err, XmlError::TooDeep { limit: MAX_DEPTH }),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "elements nest deeper than 128 levels");
        }
    }

    /// A million nested elements used to become a million nested `Element`s, whose recursive
    /// drop overflowed the stack and aborted the process.
    #[test]
    fn a_hostile_depth_is_refused_without_recursing() {
        let doc = nested(1_000_000, "");
        let err = Element::parse(doc.as_bytes()).unwrap_err();
        assert!(matches!(err, XmlError::TooDeep { .. }), "{err:?}");
        let err = Element::parse_with_depth(b"<a><b><c/></b></a>", 2).unwrap_err();
        assert!(matches!(err, XmlError::TooDeep { limit: 2 }), "{err:?}");
    }

    /// Found by the fuzz target `xml_round_trip`: the element was read, and written back as
    /// `</>`, which no reader accepts.
    #[test]
    fn an_element_without_a_name_is_refused() {
        let err = Element::parse(b"<a><\n/></a>").unwrap_err();
        assert!(
            matches!(
                err,
                XmlError::Malformed("an element name that is not an XML name")
            ),
            "{err:?}"
        );
    }

    /// Found by the fuzz target `xml_round_trip` (CI, 2026-12-01): `<\x11/\r>` was read as an
    /// element named `\x11/`, written back as `<\x11/>`, an empty element named `\x11`.
    #[test]
    fn a_name_with_a_slash_or_a_control_character_is_refused() {
        for doc in [
            &b"\x00/<\x11/\r>\x00</\x11/\r>"[..],
            b"<a b/c=\"1\"/>",
            b"<a\x01>x</a\x01>",
        ] {
            let err = Element::parse(doc).unwrap_err();
            assert!(matches!(err, XmlError::Malformed(_)), "{doc:?}: {err:?}");
        }
    }

    #[test]
    fn unknown_entities_are_not_expanded() {
        let doc = br#"<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><a>&x;&x;</a>"#;
        let err = Element::parse(doc).unwrap_err();
        assert!(
            matches!(err, XmlError::Malformed("unknown entity")),
            "{err:?}"
        );
    }
}
